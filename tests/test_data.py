"""Data sets: shapes, formulas, normalisations, determinism, file readers and argument checks."""

import gzip
import math
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from numpy.polynomial import hermite_e

from ntklab.data import DATASET_NAMES, NORMALIZATIONS, Dataset, load_dataset
from ntklab.errors import ConfigError
from ntklab.nets import build_mlp
from ntklab.spec import ArchSpec
from tests.data_files import CIFAR_NAMES, IDX_NAMES, cifar_rows, idx_bytes, mnist_images, write_cifar, write_idx_set

SYNTHETIC = ("circle", "sphere", "gaussian", "parity")


def tensors(data):
    return [data.x_train, data.y_train, data.x_test, data.y_test]


# --- shapes and the public constants ----------------------------------------------------------

def test_public_constants():
    assert DATASET_NAMES == ("circle", "sphere", "gaussian", "parity", "digits", "mnist", "fashion_mnist", "cifar10")
    assert NORMALIZATIONS == ("default", "none", "unit", "sqrt_dim", "standardize", "per_image",
                              "channel_standardize")


@pytest.mark.parametrize("name, in_dim", [("circle", 2), ("sphere", 7), ("gaussian", 7), ("parity", 7),
                                          ("digits", 64)])
def test_shapes_and_dtypes(name, in_dim):
    data = load_dataset(name, n_train=12, n_test=9, dim=7, teacher_width=16)
    assert isinstance(data, Dataset) and data.name == name
    assert data.x_train.shape == (12, in_dim) and data.x_test.shape == (9, in_dim)
    assert data.y_train.shape == (12, 1) and data.y_test.shape == (9, 1)
    assert all(t.dtype == torch.float64 and t.device.type == "cpu" for t in tensors(data))
    assert (data.in_dim, data.out_dim, data.n_train, data.n_test) == (in_dim, 1, 12, 9)
    if name == "digits":
        assert data.labels_train.shape == (12,) and data.labels_train.dtype == torch.int64
        assert data.labels_test.shape == (9,) and data.labels_test.dtype == torch.int64
    else:
        assert data.labels_train is None and data.labels_test is None


def test_to_converts_data_but_keeps_labels_int64():
    data = load_dataset("digits", n_train=5, n_test=4).to("cpu", torch.float32)
    assert all(t.dtype == torch.float32 for t in tensors(data))
    assert data.labels_train.dtype == torch.int64 and data.labels_test.dtype == torch.int64
    circle = load_dataset("circle", n_train=5, n_test=4).to(dtype=torch.float32)
    assert circle.x_train.dtype == torch.float32 and circle.extras["gamma_test"].shape == (4,)


def test_dataset_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="rows"):
        Dataset("bad", torch.zeros(3, 2), torch.zeros(4, 1), torch.zeros(2, 2), torch.zeros(2, 1))


# --- synthetic sets ---------------------------------------------------------------------------

def test_circle_targets_and_angles():
    data = load_dataset("circle", n_train=40, n_test=16, dim=5, seed=3)   # dim is ignored
    for split in ("train", "test"):
        gamma, x, y = data.extras[f"gamma_{split}"], getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        assert gamma.dtype == torch.float64
        torch.testing.assert_close(x, torch.stack([gamma.cos(), gamma.sin()], dim=1), rtol=0, atol=1e-15)
        torch.testing.assert_close(y[:, 0], gamma.cos() * gamma.sin(), rtol=0, atol=1e-15)
    gamma_train = data.extras["gamma_train"]
    assert bool((gamma_train >= 0).all() and (gamma_train < 2 * math.pi).all())
    expected = 2 * math.pi * torch.arange(16, dtype=torch.float64) / 16
    torch.testing.assert_close(data.extras["gamma_test"], expected, rtol=0, atol=1e-14)


def test_sphere_radius_is_sqrt_dim_by_default():
    data = load_dataset("sphere", n_train=50, n_test=20, dim=9, teacher_width=8)
    for x in (data.x_train, data.x_test):
        torch.testing.assert_close(x.norm(dim=1), torch.full((x.shape[0],), 3.0, dtype=torch.float64),
                                   rtol=0, atol=1e-12)


def test_parity_targets_are_products_of_the_first_bits():
    data = load_dataset("parity", n_train=64, n_test=32, dim=6, parity_bits=3, seed=1)
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        assert bool((x.abs() == 1).all())
        assert torch.equal(y[:, 0], x[:, 0] * x[:, 1] * x[:, 2])
        assert set(y.flatten().tolist()) == {-1.0, 1.0}


@pytest.mark.parametrize("depth, activation", [(1, "erf"), (2, "relu")])
def test_teacher_targets_are_the_teacher_nets_output(depth, activation):
    seed, dim = 5, 6
    data = load_dataset("gaussian", n_train=20, n_test=10, dim=dim, teacher_depth=depth, teacher_width=32,
                        teacher_activation=activation, seed=seed)
    spec = ArchSpec(depth=depth, width=32, activation=activation, sigma_w=1.0, sigma_b=0.0, parametrization="ntk")
    teacher = build_mlp(spec, in_dim=dim, seed=seed + 1_000_003, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(data.y_train, teacher(data.x_train), rtol=0, atol=1e-12)
        torch.testing.assert_close(data.y_test, teacher(data.x_test), rtol=0, atol=1e-12)


def _hermite_moment(degree, power):
    """E[(He_k(z)/√k!)^power] for z ~ N(0, 1), exact by Gauss–Hermite quadrature (probabilists')."""
    nodes, weights = hermite_e.hermegauss(degree * power + 2)
    coefficients = np.zeros(degree + 1)
    coefficients[degree] = 1.0
    values = hermite_e.hermeval(nodes, coefficients) / math.sqrt(math.factorial(degree))
    return float(np.sum(weights * values ** power) / math.sqrt(2 * math.pi))


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_polynomial_target_has_mean_zero_and_variance_one(degree):
    n = 20000
    y = load_dataset("gaussian", n_train=n, n_test=1, dim=5, target="polynomial", degree=degree,
                     seed=11).y_train[:, 0]
    # y = He_k(z)/√k! with z ~ N(0, 1): E y = 0 and E y² = 1. The sample mean has standard error
    # 1/√n and the sample second moment √((E y⁴ − 1)/n) (E y⁴ exact by quadrature: 3, 15, 93 for
    # k = 1, 2, 3); five standard errors bound a false failure by about 1e-6 whatever the seed.
    assert abs(float(y.mean())) < 5 / math.sqrt(n)
    assert abs(float(y.var()) - 1.0) < 5 * math.sqrt((_hermite_moment(degree, 4) - 1.0) / n)


def test_polynomial_target_is_hermite_of_one_direction():
    kwargs = dict(n_train=40, n_test=10, dim=4, target="polynomial", seed=2)
    linear = load_dataset("gaussian", degree=1, **kwargs)
    # Degree 1 gives y = β·x (He_1(t) = t), so least squares recovers β, a unit vector.
    beta = torch.linalg.lstsq(linear.x_train, linear.y_train).solution[:, 0]
    torch.testing.assert_close(beta.norm(), torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-10)
    cubic = load_dataset("gaussian", degree=3, **kwargs)   # same seed: same inputs and same β
    t = cubic.x_test @ beta
    torch.testing.assert_close(cubic.y_test[:, 0], (t ** 3 - 3 * t) / math.sqrt(6), rtol=0, atol=1e-9)


def test_degree_zero_is_constant_one():
    data = load_dataset("sphere", n_train=5, n_test=3, target="polynomial", degree=0)
    assert torch.equal(data.y_train, torch.ones(5, 1, dtype=torch.float64))


def test_noise_changes_train_targets_only():
    kwargs = dict(n_train=2000, n_test=30, dim=3, teacher_width=16, seed=4)
    clean, noisy = load_dataset("gaussian", **kwargs), load_dataset("gaussian", noise=0.5, **kwargs)
    assert torch.equal(clean.x_train, noisy.x_train) and torch.equal(clean.y_test, noisy.y_test)
    # The noise's sample std over 2000 draws is within 5 standard errors (0.5/√(2·2000)) of 0.5.
    assert abs(float((noisy.y_train - clean.y_train).std()) - 0.5) < 5 * 0.5 / math.sqrt(4000)


# --- determinism ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SYNTHETIC + ("digits",))
def test_same_seed_same_data_other_seed_other_data(name):
    kwargs = dict(n_train=10, n_test=6, dim=4, teacher_width=8)
    first, again, other = (load_dataset(name, seed=s, **kwargs) for s in (7, 7, 8))
    assert all(torch.equal(a, b) for a, b in zip(tensors(first), tensors(again)))
    assert not torch.equal(first.x_train, other.x_train)


def test_test_points_do_not_depend_on_n_train():
    small, large = (load_dataset("sphere", n_train=n, n_test=8, teacher_width=8) for n in (5, 50))
    assert torch.equal(small.x_test, large.x_test) and torch.equal(small.y_test, large.y_test)


# --- normalisations and centring --------------------------------------------------------------

@pytest.mark.parametrize("name", ["gaussian", "digits"])
@pytest.mark.parametrize("normalize, radius", [("unit", lambda d: 1.0), ("sqrt_dim", math.sqrt)])
def test_fixed_norm_normalizations(name, normalize, radius):
    data = load_dataset(name, n_train=30, n_test=20, dim=5, teacher_width=8, normalize=normalize)
    for x in (data.x_train, data.x_test):
        expected = torch.full((x.shape[0],), radius(data.in_dim), dtype=torch.float64)
        torch.testing.assert_close(x.norm(dim=1), expected, rtol=0, atol=1e-12)


def test_real_sets_default_to_sqrt_dim():
    data = load_dataset("digits", n_train=10, n_test=5)
    torch.testing.assert_close(data.x_train.norm(dim=1), torch.full((10,), 8.0, dtype=torch.float64),
                               rtol=0, atol=1e-12)


def test_standardize_uses_train_statistics():
    raw = load_dataset("gaussian", n_train=40, n_test=10, dim=3, teacher_width=8)
    data = load_dataset("gaussian", n_train=40, n_test=10, dim=3, teacher_width=8, normalize="standardize")
    torch.testing.assert_close(data.x_train.mean(0), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(data.x_train.std(0, correction=0), torch.ones(3, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    mean, std = raw.x_train.mean(0), raw.x_train.std(0, correction=0)
    torch.testing.assert_close(data.x_test, (raw.x_test - mean) / std, rtol=0, atol=1e-12)


def test_standardize_only_centres_constant_features():
    data = load_dataset("digits", n_train=100, n_test=10, normalize="standardize")
    raw = load_dataset("digits", n_train=100, n_test=10, normalize="none")
    constant = raw.x_train.amax(0) == raw.x_train.amin(0)
    assert bool(constant.any()) and not bool(constant.all())   # digits has blank border pixels
    torch.testing.assert_close(data.x_train.mean(0), torch.zeros(64, dtype=torch.float64), rtol=0, atol=1e-12)
    std = data.x_train.std(0, correction=0)
    assert bool((std[constant] == 0).all())
    torch.testing.assert_close(std[~constant], torch.ones_like(std[~constant]), rtol=0, atol=1e-12)


def test_zero_point_cannot_be_scaled_to_a_norm():
    # No bundled data set has a blank point, so call the transform directly.
    from ntklab.data.transforms import normalize_inputs
    x = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    with pytest.raises(ConfigError) as err:
        normalize_inputs(x, x, "unit")
    assert err.value.field == "data.normalize" and "point 1" in str(err.value)


@pytest.mark.parametrize("name, targets", [("sphere", "scalar"), ("digits", "onehot")])
def test_center_targets_gives_zero_train_mean(name, targets):
    kwargs = dict(n_train=25, n_test=10, dim=4, teacher_width=8, targets=targets, seed=6)
    raw, centred = load_dataset(name, **kwargs), load_dataset(name, center_targets=True, **kwargs)
    torch.testing.assert_close(centred.y_train.mean(0), torch.zeros(raw.out_dim, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(centred.y_test, raw.y_test - raw.y_train.mean(0), rtol=0, atol=1e-12)


# --- classification targets on digits ---------------------------------------------------------

def test_digits_pixels_and_class_filter():
    data = load_dataset("digits", n_train=60, n_test=40, normalize="none", classes=[0, 5, 8])
    x = torch.cat([data.x_train, data.x_test])
    assert data.in_dim == 64 and bool((x >= 0).all() and (x <= 1).all())
    assert torch.equal(x * 16, (x * 16).round())          # intensities 0..16, divided by 16
    labels = torch.cat([data.labels_train, data.labels_test])
    assert set(labels.tolist()) == {0, 5, 8}
    assert data.extras["classes"] == (0, 5, 8)


def test_onehot_targets_follow_the_class_order():
    classes = [3, 1, 7]
    data = load_dataset("digits", n_train=50, n_test=20, targets="onehot", classes=classes)
    for y, labels in ((data.y_train, data.labels_train), (data.y_test, data.labels_test)):
        assert y.shape[1] == 3 and data.out_dim == 3
        assert torch.equal(y.sum(1), torch.ones(y.shape[0], dtype=torch.float64))
        positions = torch.tensor([classes.index(int(label)) for label in labels])
        assert torch.equal(y.argmax(1), positions)


def test_scalar_targets_for_two_classes_and_for_many():
    two = load_dataset("digits", n_train=40, n_test=20, classes=[7, 2])
    assert torch.equal(two.y_train[:, 0], torch.where(two.labels_train == 7, 1.0, -1.0).double())
    assert set(two.labels_train.tolist()) == {2, 7}
    many = load_dataset("digits", n_train=40, n_test=20)
    assert torch.equal(many.y_train[:, 0], torch.where(many.labels_train % 2 == 0, 1.0, -1.0).double())
    # classes of one parity: every target +1, nothing to classify (and no threshold to score at)
    with pytest.raises(ConfigError) as err:
        load_dataset("digits", n_train=30, n_test=12, classes=[0, 2, 4])
    assert err.value.field == "data.classes" and "all have the scalar target +1" in str(err.value)
    assert load_dataset("digits", n_train=30, n_test=12, classes=[0, 2, 4], targets="onehot").out_dim == 3


def test_digits_too_many_points():
    with pytest.raises(ConfigError) as err:
        load_dataset("digits", n_train=300, n_test=100, classes=[0, 1])
    assert err.value.field == "data.n_train" and "n_train + n_test = 400" in str(err.value)


# --- MNIST and Fashion-MNIST from IDX files ---------------------------------------------------
# The files written here hold one image per label, so a label names its image; a balanced draw
# over ten classes cannot be made from them, and these tests of reading and plain sampling use
# balanced=False (balanced subsets: tests/test_image_data.py).

@pytest.mark.parametrize("name, torchvision_dir", [("mnist", "MNIST/raw"), ("fashion_mnist", "FashionMNIST/raw")])
@pytest.mark.parametrize("gz, in_subdir", [(False, False), (True, False), (False, True), (True, True)])
def test_idx_sets_read_idx_files(tmp_path, name, torchvision_dir, gz, in_subdir):
    images = write_idx_set(tmp_path / torchvision_dir if in_subdir else tmp_path, gz=gz)
    data = load_dataset(name, n_train=6, n_test=4, root=str(tmp_path), normalize="none", balanced=False)
    assert data.x_train.shape == (6, 784) and data.x_test.shape == (4, 784)
    assert sorted(data.labels_train.tolist()) == [0, 1, 2, 3, 4, 5]
    assert sorted(data.labels_test.tolist()) == [6, 7, 8, 9]
    expected_train = torch.from_numpy(images["train"].reshape(6, 784)).double() / 255
    expected_test = torch.from_numpy(images["test"].reshape(4, 784)).double() / 255
    assert torch.equal(data.x_train, expected_train[data.labels_train])
    assert torch.equal(data.x_test, expected_test[9 - data.labels_test])
    assert torch.equal(data.y_train[:, 0], torch.where(data.labels_train % 2 == 0, 1.0, -1.0).double())


def test_mnist_samples_without_replacement_and_respects_sizes(tmp_path):
    write_idx_set(tmp_path)
    data = load_dataset("mnist", n_train=3, n_test=2, root=tmp_path, seed=1, balanced=False)
    assert len(set(data.labels_train.tolist())) == 3 and len(set(data.labels_test.tolist())) == 2
    torch.testing.assert_close(data.x_train.norm(dim=1), torch.full((3,), 28.0, dtype=torch.float64),
                               rtol=0, atol=1e-12)   # default "sqrt_dim": ‖x‖ = √784
    filtered = load_dataset("mnist", n_train=2, n_test=1, root=tmp_path, classes=[8, 4, 1], targets="onehot",
                            balanced=False)
    assert sorted(filtered.labels_train.tolist()) == [1, 4] and filtered.labels_test.tolist() == [8]
    onehot = {8: [1.0, 0.0, 0.0], 4: [0.0, 1.0, 0.0], 1: [0.0, 0.0, 1.0]}
    assert filtered.y_train.tolist() == [onehot[int(label)] for label in filtered.labels_train]
    assert filtered.y_test.tolist() == [onehot[8]]
    with pytest.raises(ConfigError) as err:
        load_dataset("mnist", n_train=7, n_test=2, root=tmp_path, balanced=False)
    assert err.value.field == "data.n_train" and "only 6" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_dataset("mnist", n_train=2, n_test=2, root=tmp_path, classes=[1, 2, 6], balanced=False)
    assert err.value.field == "data.n_test" and "only 1" in str(err.value)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
@pytest.mark.parametrize("root_kind", [None, "absent", "empty"])
def test_missing_files_name_every_expected_file(tmp_path, name, root_kind):
    root = {None: None, "absent": tmp_path / "nowhere", "empty": tmp_path}[root_kind]
    with pytest.raises(ConfigError) as err:
        load_dataset(name, root=root)
    message = str(err.value)
    assert err.value.field == "data.root" and message.startswith("data.root")
    assert all(file in message for file in (CIFAR_NAMES if name == "cifar10" else IDX_NAMES))
    where = {"mnist": ["MNIST/raw", ".gz", "mnist.pkl.gz"], "cifar10": ["cifar-10-batches-py"],
             "fashion_mnist": ["FashionMNIST/raw", ".gz", "/usr/share/datasets/fashion-mnist"]}[name]
    assert all(text in message for text in where), message
    assert "\n" not in message     # one line, as the command line prints it
    if root is not None:
        assert str(root) in message


def test_partly_missing_mnist_names_the_missing_file(tmp_path):
    write_idx_set(tmp_path)
    os.remove(tmp_path / IDX_NAMES[3])
    with pytest.raises(ConfigError) as err:
        load_dataset("mnist", root=tmp_path, n_train=2, n_test=2)
    assert str(err.value).startswith(f"data.root: {IDX_NAMES[3]} not found in {tmp_path}")


@pytest.mark.parametrize("gz", [False, True])
def test_bad_idx_magic_names_the_file(tmp_path, gz):
    write_idx_set(tmp_path)
    path = tmp_path / IDX_NAMES[0]
    raw = idx_bytes(mnist_images(6, 0), 0x801)   # a label magic number on the image file
    os.remove(path)
    if gz:
        path = tmp_path / (IDX_NAMES[0] + ".gz")
        with gzip.open(path, "wb") as file:
            file.write(raw)
    else:
        path.write_bytes(raw)
    with pytest.raises(ConfigError) as err:
        load_dataset("mnist", root=tmp_path, n_train=2, n_test=2)
    assert err.value.field == "data.root"
    assert str(path) in str(err.value) and "0x00000801" in str(err.value) and "0x00000803" in str(err.value)


def test_truncated_idx_and_broken_gzip_name_the_file(tmp_path):
    write_idx_set(tmp_path)
    labels = tmp_path / IDX_NAMES[1]
    labels.write_bytes(labels.read_bytes()[:-1])
    with pytest.raises(ConfigError, match=re.escape(f"{labels}: IDX header gives shape")):
        load_dataset("mnist", root=tmp_path, n_train=2, n_test=2)
    os.remove(labels)
    (tmp_path / (IDX_NAMES[1] + ".gz")).write_bytes(b"not gzip at all")
    with pytest.raises(ConfigError, match=re.escape(f"cannot read {tmp_path / IDX_NAMES[1]}.gz")):
        load_dataset("mnist", root=tmp_path, n_train=2, n_test=2)


def test_idx_files_of_no_images_read_as_an_empty_split(tmp_path):
    # a test split of 0 images is a valid pair of IDX files: asking for test images says there are too few
    write_idx_set(tmp_path, test_labels=[])
    with pytest.raises(ConfigError) as err:
        load_dataset("mnist", root=tmp_path, n_train=2, n_test=2)
    assert err.value.field == "data.n_test"


# --- CIFAR-10 from pickled batches ------------------------------------------------------------

@pytest.mark.parametrize("subdir", ["", "cifar-10-batches-py"])
def test_cifar10_reads_pickled_batches(tmp_path, subdir):
    write_cifar(tmp_path / subdir if subdir else tmp_path)
    data = load_dataset("cifar10", n_train=30, n_test=6, root=tmp_path, normalize="none", targets="onehot")
    assert data.x_train.shape == (30, 3072) and data.x_test.shape == (6, 3072) and data.out_dim == 10
    for x, labels, first in ((data.x_train, data.labels_train, 0), (data.x_test, data.labels_test, 30)):
        index = (x[:, 0] * 255).round().long() // 5   # pixel 0 of row r < 52 is 5r: the row's number
        expected = torch.from_numpy(cifar_rows(0, 36)).double()[index] / 255
        assert torch.equal(x, expected)
        assert torch.equal(labels, index % 10)
        assert sorted(index.tolist()) == list(range(first, first + x.shape[0]))


def test_cifar10_samples_within_small_batches(tmp_path):
    write_cifar(tmp_path)
    data = load_dataset("cifar10", n_train=4, n_test=2, root=tmp_path, classes=[0, 1], seed=2)
    assert set(data.labels_train.tolist()) <= {0, 1} and data.n_train == 4
    assert torch.equal(data.y_train[:, 0], torch.where(data.labels_train == 0, 1.0, -1.0).double())
    with pytest.raises(ConfigError) as err:   # the test batch holds labels 0, 1 once each
        load_dataset("cifar10", n_train=4, n_test=3, root=tmp_path, classes=[0, 1])
    assert err.value.field == "data.n_test"


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


class _DTypeState:
    """A plain dtype given another state by pickle's BUILD: a subarray of 10^8 items in 8 bytes, or
    the flags of a dtype holding objects; an array of it reads memory the file chose."""

    def __init__(self, state):
        self.state = state

    def __reduce__(self):
        return (np.dtype, ("i8", False, True), self.state)


class _ArrayOf:
    """An int64 array of 6 items whose dtype is ``dtype`` (a _DTypeState), as NumPy pickles arrays."""

    def __init__(self, dtype):
        self.dtype = dtype

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return (_reconstruct, (np.ndarray, (0,), "b"), (1, (6,), self.dtype, False, bytes(48)))


class _ObjectsOverBytes:
    """An object array over raw bytes: its entries would be pointers the file chose (reading them
    crashes the interpreter), made from NumPy's own constructors, which the unpickler allows."""

    def __init__(self, dtype):
        self.dtype = dtype

    def __reduce__(self):
        return (np.ndarray, ((2,), self.dtype, b"A" * 16))


@pytest.mark.parametrize("content, needle", [
    ({b"data": np.zeros((6, 100), np.uint8), b"labels": [0] * 6}, "(n, 3072)"),
    ({b"data": np.zeros((6, 3072), np.uint8), b"labels": [0] * 5}, "b'labels'"),
    ({b"pixels": np.zeros((6, 3072), np.uint8)}, "b'data' and b'labels'"),
    ({b"data": _Evil(), b"labels": [0] * 6}, "getcwd, which a data batch never needs"),
    ({b"data": np.zeros((6, 3072), np.uint8), b"labels": _ObjectsOverBytes("O")}, "numpy.ndarray on raw memory"),
    ({b"data": np.zeros((6, 3072), np.uint8), b"labels": _ObjectsOverBytes(np.dtype("O"))}, "dtype object"),
    ({b"data": np.zeros((6, 3072), np.uint8), b"labels": np.zeros(6, dtype=[("label", "O")])},
     "data arrays hold numbers"),
    ({b"data": np.zeros((6, 3072), np.uint8), b"labels": np.zeros(6, dtype=object)}, "dtype object"),
    (None, "not a CIFAR-10 python batch"),
])
def test_malformed_cifar_batch_names_the_file(tmp_path, content, needle):
    write_cifar(tmp_path)
    path = tmp_path / "data_batch_3"
    path.write_bytes(b"garbage" if content is None else pickle.dumps(content))
    with pytest.raises(ConfigError) as err:
        load_dataset("cifar10", root=tmp_path, n_train=2, n_test=2)
    assert err.value.field == "data.root" and str(path) in str(err.value) and needle in str(err.value)


@pytest.mark.parametrize("state", [(3, "<", (np.dtype("i8"), (10 ** 8,)), None, None, -1, -1, 0),
                                   (3, "<", None, None, None, -1, -1, 63)])
def test_a_dtype_given_another_state_is_refused(tmp_path, state):
    # in a child process: reading such an array crashed the interpreter, which would take pytest along
    write_cifar(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((6, 3072), np.uint8),
                                                          b"labels": _ArrayOf(_DTypeState(state))}, protocol=2))
    code = ("from ntklab.data import load_dataset\n"
            f"load_dataset('cifar10', root={str(tmp_path)!r}, n_train=2, n_test=2)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.returncode      # an exception, not a signal
    assert (f"ConfigError: data.root: {tmp_path / 'data_batch_3'} is not a CIFAR-10 python batch: it gives a dtype "
            "a state other than a byte order") in done.stderr


# --- argument checks --------------------------------------------------------------------------

@pytest.mark.parametrize("name, kwargs, field", [
    ("moons", {}, "data.name"),
    (None, {}, "data.name"),
    ("sphere", dict(n_train=0), "data.n_train"),
    ("sphere", dict(n_train=2.0), "data.n_train"),
    ("sphere", dict(n_test=0), "data.n_test"),
    ("sphere", dict(dim=0), "data.dim"),
    ("sphere", dict(degree=-1), "data.degree"),
    ("sphere", dict(noise=-0.1), "data.noise"),
    ("sphere", dict(noise=float("nan")), "data.noise"),
    ("sphere", dict(target="cubic"), "data.target"),
    ("sphere", dict(targets="probabilities"), "data.targets"),
    ("sphere", dict(targets="onehot"), "data.targets"),
    ("sphere", dict(classes=[0, 1]), "data.classes"),
    ("sphere", dict(normalize="l2"), "data.normalize"),
    ("sphere", dict(center_targets="yes"), "data.center_targets"),
    ("sphere", dict(teacher_activation="swishy"), "data.teacher_activation"),
    ("sphere", dict(teacher_depth=-1), "data.teacher_depth"),
    ("sphere", dict(teacher_width=0), "data.teacher_width"),
    ("sphere", dict(seed=-1), "data.seed"),
    ("sphere", dict(seed=True), "data.seed"),
    ("parity", dict(parity_bits=0), "data.parity_bits"),
    ("parity", dict(dim=3, parity_bits=4), "data.parity_bits"),
    ("digits", dict(classes=[1]), "data.classes"),
    ("digits", dict(classes=[1, 1, 2]), "data.classes"),
    ("digits", dict(classes=[1, 10]), "data.classes"),
    ("digits", dict(classes="01"), "data.classes"),
    ("mnist", dict(root=3), "data.root"),
])
def test_invalid_arguments_raise_config_error_with_field(name, kwargs, field):
    with pytest.raises(ConfigError) as err:
        load_dataset(name, **kwargs)
    assert err.value.field == field and str(err.value).startswith(field)


def test_error_messages_list_allowed_values():
    with pytest.raises(ConfigError) as err:
        load_dataset("moons")
    assert err.value.allowed == DATASET_NAMES
    with pytest.raises(ConfigError) as err:
        load_dataset("circle", targets="onehot")
    assert all(name in str(err.value) for name in ("digits", "mnist", "cifar10"))
    with pytest.raises(ConfigError) as err:
        load_dataset("sphere", teacher_activation="swishy")
    assert "relu" in str(err.value)
