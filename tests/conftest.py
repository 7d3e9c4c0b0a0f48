import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    """A seeded CPU generator, so every test draws the same inputs on every run."""
    return torch.Generator().manual_seed(20261122)


def random_inputs(n, d, generator, dtype=torch.float64):
    return torch.randn(n, d, generator=generator, dtype=dtype)
