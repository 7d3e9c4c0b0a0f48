"""Collection hooks and fixtures; the plain helper functions are in tests/helpers.py."""

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
