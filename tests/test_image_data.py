"""Images stay images: the (N, C, H, W) layout, Fashion-MNIST, MNIST's classic pickle, class-balanced
subsets, centred one-hot targets and the per-image normalisations. Every file is written by the test
(tests/data_files.py); nothing is downloaded."""

import dataclasses
import inspect
import os

import numpy as np
import pytest
import torch

from ntklab.config import DataConfig
from ntklab.data import CLASSIFICATION_NAMES, IMAGE_SHAPES, Dataset, load_dataset, seeding
from ntklab.data.transforms import normalize_inputs
from ntklab.errors import ConfigError
from tests.data_files import (IDX_NAMES, idx_bytes, mnist_images, write_cifar, write_idx_set, write_mnist_pickle,
                              write_pickle_gz)
from tests.helpers import compose_train

# Four train and two test images of every class: enough for balanced draws over ten classes.
BALANCED_TRAIN = tuple(i % 10 for i in range(40))
BALANCED_TEST = tuple(i % 10 for i in range(20))
# Sizes each image set can give balanced over ten classes from the files written below (CIFAR: three
# train images per class, and test labels 0..5, so six test points take one each of classes 0..5).
SIZES = {"digits": (30, 20), "mnist": (30, 20), "fashion_mnist": (30, 20), "cifar10": (20, 6)}


def write_image_set(name, folder):
    """The files of image set ``name`` in ``folder`` (none for digits, which ships with scikit-learn)."""
    if name in ("mnist", "fashion_mnist"):
        write_idx_set(folder, train_labels=BALANCED_TRAIN, test_labels=BALANCED_TEST)
    elif name == "cifar10":
        write_cifar(folder)


def load(name, root, **kwargs):
    n_train, n_test = SIZES[name]
    return load_dataset(name, n_train=n_train, n_test=n_test, root=root, **kwargs)


# --- the Dataset type -------------------------------------------------------------------------

def test_in_shape_and_in_dim_of_vectors_and_images():
    y = torch.zeros(3, 2, dtype=torch.float64)
    vectors = Dataset("v", torch.zeros(3, 5), y, torch.zeros(1, 5), y[:1])
    assert vectors.in_shape == (5,) and vectors.in_dim == 5
    x = torch.arange(3 * 2 * 4 * 4, dtype=torch.float64).reshape(3, 2, 4, 4)
    images = Dataset("i", x, y, x[:1], y[:1], labels_train=torch.arange(3), labels_test=torch.arange(1))
    assert images.in_shape == (2, 4, 4) and images.in_dim == 32
    flat = images.flattened()
    assert flat.x_train.shape == (3, 32) and flat.in_shape == (32,) and torch.equal(flat.x_train.reshape(x.shape), x)
    moved = images.to("cpu", torch.float32)
    assert moved.x_train.shape == (3, 2, 4, 4) and moved.x_test.dtype == torch.float32
    assert moved.labels_train.dtype == torch.int64


def test_dataset_rejects_other_input_shapes():
    y = torch.zeros(2, 1)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        Dataset("bad", torch.zeros(2, 8, 8), y, torch.zeros(2, 8, 8), y)
    with pytest.raises(ValueError, match="disagree"):   # same number of features, other image shape
        Dataset("bad", torch.zeros(2, 1, 8, 8), y, torch.zeros(2, 1, 4, 16), y)


# --- images and flat inputs hold the same numbers ---------------------------------------------

@pytest.mark.parametrize("normalize", ["none", "sqrt_dim", "standardize", "per_image", "channel_standardize"])
@pytest.mark.parametrize("name", CLASSIFICATION_NAMES)
def test_images_are_the_flat_inputs_reshaped(tmp_path, name, normalize):
    write_image_set(name, tmp_path)
    images = load(name, tmp_path, images=True, normalize=normalize, targets="onehot", seed=3)
    flat = load(name, tmp_path, normalize=normalize, targets="onehot", seed=3)
    n_train, n_test = SIZES[name]
    assert images.x_train.shape == (n_train, *IMAGE_SHAPES[name]) and images.x_test.shape == (n_test, *IMAGE_SHAPES[name])
    assert images.in_shape == IMAGE_SHAPES[name] and images.in_dim == flat.in_dim == flat.x_train.shape[1]
    assert images.x_train.dtype == torch.float64
    assert torch.equal(images.x_train.flatten(1), flat.x_train) and torch.equal(images.x_test.flatten(1), flat.x_test)
    assert torch.equal(images.y_train, flat.y_train) and torch.equal(images.labels_test, flat.labels_test)


@pytest.mark.parametrize("name, gz", [("mnist", False), ("fashion_mnist", True)])
def test_idx_images_hold_the_file_pixels(tmp_path, name, gz):
    written = write_idx_set(tmp_path, gz=gz)    # one image per label: label l is train image l, test image 9 − l
    data = load_dataset(name, n_train=6, n_test=4, root=tmp_path, images=True, normalize="none", balanced=False)
    expected_train = torch.from_numpy(written["train"]).double()[data.labels_train] / 255
    expected_test = torch.from_numpy(written["test"]).double()[9 - data.labels_test] / 255
    assert torch.equal(data.x_train, expected_train[:, None]) and torch.equal(data.x_test, expected_test[:, None])


def test_a_data_sets_own_subfolder_wins_over_files_loose_in_the_root(tmp_path):
    # MNIST's files loose in a shared root, Fashion-MNIST's (same names, other labels) where torchvision
    # puts them: fashion_mnist reads its own folder, mnist the root; and never a set mixed from both
    write_idx_set(tmp_path, train_labels=BALANCED_TRAIN, test_labels=BALANCED_TEST)
    fashion = [9 - label for label in BALANCED_TRAIN], [9 - label for label in BALANCED_TEST]
    write_idx_set(tmp_path / "FashionMNIST" / "raw", train_labels=fashion[0], test_labels=fashion[1])
    kwargs = dict(n_train=40, n_test=20, root=tmp_path, balanced=False, normalize="none", images=True)
    for name, labels in (("fashion_mnist", fashion), ("mnist", (BALANCED_TRAIN, BALANCED_TEST))):
        data = load_dataset(name, **kwargs)
        # which written image each drawn one is, by its first pixel (distinct: 31m mod 255 + 1), and
        # the label the folder's file gave it
        first_pixels = torch.from_numpy(mnist_images(len(labels[0]), 0)[:, 0, 0]).long()
        drawn = [int((first_pixels == p).nonzero()[0]) for p in (data.x_train[:, 0, 0, 0] * 255).round().long()]
        assert torch.equal(data.labels_train, torch.tensor(labels[0])[drawn]), name
    (tmp_path / "FashionMNIST" / "raw" / IDX_NAMES[3]).unlink()       # three there, all four in the root
    assert torch.equal(load_dataset("fashion_mnist", **kwargs).labels_test,
                       load_dataset("mnist", **kwargs).labels_test)


def test_digits_images_are_scikit_learns_images():
    from sklearn.datasets import load_digits

    data = load_dataset("digits", n_train=20, n_test=10, images=True, normalize="none", balanced=False)
    order = seeding.stream_rng(0, seeding.SPLIT).permutation(1797)    # all ten classes: every image
    expected = torch.from_numpy(load_digits().images[order[:20]]) / 16
    assert torch.equal(data.x_train, expected[:, None])


@pytest.mark.parametrize("protocol", [2, 5, "python2"])      # python2: as the official files were written
def test_cifar_channels_are_the_red_green_blue_planes(tmp_path, protocol):
    write_cifar(tmp_path, protocol=protocol)
    data = load_dataset("cifar10", n_train=30, n_test=6, root=tmp_path, images=True, normalize="none")
    h, w = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    for x in (data.x_train, data.x_test):
        rows = (x[:, 0, 0, 0] * 255).round().long() // 5     # red pixel (0, 0) of row r < 52 is 5r
        for c in range(3):
            # data_files.cifar_rows: value (5r + p + 85c) mod 256 at p = 1024c + 32h + w
            expected = (5 * rows[:, None, None] + 1024 * c + 32 * h + w + 85 * c) % 256
            assert torch.equal(x[:, c] * 255, expected.double()), c
    assert not torch.equal(data.x_train[:, 0], data.x_train[:, 1])    # the planes do differ


def test_idx_images_of_another_size_name_the_file(tmp_path):
    write_idx_set(tmp_path)
    path = tmp_path / IDX_NAMES[0]
    path.write_bytes(idx_bytes(np.ones((6, 14, 14), dtype=np.uint8), 0x803))
    with pytest.raises(ConfigError) as err:
        load_dataset("fashion_mnist", root=tmp_path, n_train=2, n_test=2)
    assert err.value.field == "data.root" and str(path) in str(err.value) and "14x14" in str(err.value)


# --- MNIST from the classic pickle ------------------------------------------------------------

def test_mnist_pickle_gives_the_idx_numbers(tmp_path):
    written = write_idx_set(tmp_path / "idx", train_labels=BALANCED_TRAIN, test_labels=BALANCED_TEST)
    labels = {"train": np.array(BALANCED_TRAIN), "test": np.array(BALANCED_TEST)}
    write_mnist_pickle(tmp_path / "pickle" / "mnist.pkl.gz", written, labels, n_valid=10)
    # n_train = 40 takes every train image, so the pickle's valid part must be there, in order
    kwargs = dict(n_train=40, n_test=20, images=True, targets="onehot", seed=5)
    from_idx = load_dataset("mnist", root=tmp_path / "idx", **kwargs)
    from_pickle = load_dataset("mnist", root=tmp_path / "pickle", **kwargs)
    for field in ("x_train", "y_train", "x_test", "y_test", "labels_train", "labels_test"):
        assert torch.equal(getattr(from_pickle, field), getattr(from_idx, field)), field


def test_complete_idx_files_win_over_the_pickle(tmp_path):
    idx_images = write_idx_set(tmp_path)["train"]           # train labels 0..5, one image each
    pickle_images = {"train": mnist_images(6, 50), "test": mnist_images(4, 60)}   # other pixels
    write_mnist_pickle(tmp_path / "mnist.pkl.gz", pickle_images,
                       {"train": np.arange(6), "test": np.arange(9, 5, -1)}, n_valid=2)

    def train_pixels():
        data = load_dataset("mnist", n_train=6, n_test=4, root=tmp_path, normalize="none", balanced=False,
                            images=True)
        return data.x_train[:, 0] * 255, data.labels_train

    pixels, labels = train_pixels()
    assert torch.equal(pixels, torch.from_numpy(idx_images).double()[labels])
    os.remove(tmp_path / IDX_NAMES[2])       # no longer a complete IDX set: the pickle is read
    pixels, labels = train_pixels()
    assert torch.equal(pixels, torch.from_numpy(pickle_images["train"]).double()[labels])


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def _pair(n=3, scale=256.0, features=784, labels=None):
    x = (np.arange(n * features).reshape(n, features) % 256 / scale).astype(np.float32)
    return x, np.arange(n) % 10 if labels is None else labels


@pytest.mark.parametrize("content, needle", [
    ((_pair(), _pair(), (_Evil(), [0])), "getcwd, which a data batch never needs"),
    ((_pair(), _pair(), (_pair()[0], np.zeros(3, dtype=object))), "dtype object"),
    ({"train": _pair()}, "((train_x, train_y), (valid_x, valid_y), (test_x, test_y))"),
    ((_pair(), _pair(), _pair(scale=255.0)), "k/256 for bytes k in 0..255"),
    ((_pair(), _pair(features=100), _pair()), "the valid images must be floats of shape (n, 784)"),
    ((_pair(labels=np.arange(2)), _pair(), _pair()), "the train labels must be 3 integers"),
    ((_pair(labels=np.array([0, 1, 10])), _pair(), _pair()), "labels must lie in 0..9"),
])
def test_malformed_mnist_pickle_names_the_file(tmp_path, content, needle):
    path = tmp_path / "mnist.pkl.gz"
    write_pickle_gz(path, content)
    with pytest.raises(ConfigError) as err:
        load_dataset("mnist", root=tmp_path, n_train=2, n_test=2)
    assert err.value.field == "data.root" and str(path) in str(err.value) and needle in str(err.value)


def test_a_pickle_that_is_not_gzip_names_the_file(tmp_path):
    (tmp_path / "mnist.pkl.gz").write_bytes(b"not gzip")
    with pytest.raises(ConfigError, match=f"cannot read {tmp_path / 'mnist.pkl.gz'}") as err:
        load_dataset("mnist", root=tmp_path, n_train=2, n_test=2)
    assert err.value.field == "data.root"


# --- class-balanced subsets -------------------------------------------------------------------

def counts(labels, classes=range(10)):
    return [int((labels == c).sum()) for c in classes]


def test_balanced_counts_are_exact_per_class():
    data = load_dataset("digits", n_train=502, n_test=23)
    # ⌊n/10⌋ each, and the remainder one each to the first classes in `classes` order
    assert counts(data.labels_train) == [51, 51] + [50] * 8
    assert counts(data.labels_test) == [3, 3, 3] + [2] * 7
    chosen = load_dataset("digits", n_train=8, n_test=4, classes=[7, 3, 5], targets="onehot")
    assert counts(chosen.labels_train, [7, 3, 5]) == [3, 3, 2] and counts(chosen.labels_test, [7, 3, 5]) == [2, 1, 1]


def test_balanced_subsets_of_a_file_set(tmp_path):
    write_idx_set(tmp_path, train_labels=BALANCED_TRAIN, test_labels=BALANCED_TEST)
    data = load_dataset("fashion_mnist", n_train=30, n_test=20, root=tmp_path)
    assert counts(data.labels_train) == [3] * 10 and counts(data.labels_test) == [2] * 10
    assert len(set(data.x_train[:, 0].tolist())) == 30      # thirty distinct images: no repeats


@pytest.mark.parametrize("name", ["digits", "mnist"])
def test_balanced_subsets_follow_the_seed_and_grow_by_adding(tmp_path, name):
    write_image_set(name, tmp_path)

    def draw(seed, n_train=30):
        return load_dataset(name, n_train=n_train, n_test=20, root=tmp_path, seed=seed, normalize="none")

    first, again, other = draw(1), draw(1), draw(2)
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.x_test, again.x_test)
    assert not torch.equal(first.x_train, other.x_train)
    # a larger n keeps every point of the smaller one (each class takes a longer prefix of one order)
    small, large = draw(1, n_train=10), first
    assert set(map(tuple, small.x_train.tolist())) <= set(map(tuple, large.x_train.tolist()))


def test_unbalanced_draw_is_the_plain_sample():
    # balanced=False keeps the earlier draw: the first n of the seeded order, then the next M
    data = load_dataset("digits", n_train=40, n_test=15, seed=4, normalize="none", balanced=False)
    from sklearn.datasets import load_digits

    order = seeding.stream_rng(4, seeding.SPLIT).permutation(1797)
    labels = torch.from_numpy(load_digits().target.astype(np.int64))
    assert torch.equal(data.labels_train, labels[order[:40]]) and torch.equal(data.labels_test, labels[order[40:55]])


@pytest.mark.parametrize("kwargs, field, needle", [
    (dict(name="mnist", n_train=50, n_test=20), "data.n_train", "class 0 needs 5 and has 4"),
    (dict(name="mnist", n_train=30, n_test=21), "data.n_test", "class 0 needs 3 and has 2"),
    # digits: 170 of each class train, and class 8 (174 images) keeps only 4 for the test split
    (dict(name="digits", n_train=1700, n_test=90), "data.n_test", "class 8 needs 9 and has 4"),
])
def test_too_few_images_of_a_class(tmp_path, kwargs, field, needle):
    write_idx_set(tmp_path, train_labels=BALANCED_TRAIN, test_labels=BALANCED_TEST)
    with pytest.raises(ConfigError) as err:
        load_dataset(root=tmp_path, **kwargs)
    message = str(err.value)
    assert err.value.field == field and needle in message and "data.balanced=false" in message


# --- targets as in Arora et al. (2019) --------------------------------------------------------

@pytest.mark.parametrize("classes, high, low", [(None, 0.9, -0.1), ([2, 4, 6, 8], 0.75, -0.25)])
def test_centred_balanced_onehot_targets_are_exact(classes, high, low):
    data = load_dataset("digits", n_train=400, n_test=200, classes=classes, targets="onehot", center_targets=True)
    chosen = torch.tensor(classes or range(10))
    for y, labels in ((data.y_train, data.labels_train), (data.y_test, data.labels_test)):
        expected = torch.full(y.shape, low, dtype=torch.float64)   # Python floats are doubles: 0.9 exactly as written
        expected[labels[:, None] == chosen[None, :]] = high
        assert torch.equal(y, expected)    # exact: the column means are exactly 1/k (module docstring)


# --- per-image normalisations -----------------------------------------------------------------

def test_per_image_formula(tmp_path):
    write_cifar(tmp_path)
    raw = load_dataset("cifar10", n_train=20, n_test=6, root=tmp_path, images=True, normalize="none")
    data = load_dataset("cifar10", n_train=20, n_test=6, root=tmp_path, images=True, normalize="per_image")
    d = 3 * 32 * 32
    for x, x_raw in ((data.x_train, raw.x_train), (data.x_test, raw.x_test)):
        centred = x_raw.numpy() - x_raw.numpy().mean(axis=(1, 2, 3), keepdims=True)
        expected = centred * np.sqrt(d) / np.sqrt((centred ** 2).sum(axis=(1, 2, 3), keepdims=True))
        np.testing.assert_allclose(x.numpy(), expected, rtol=0, atol=1e-12)   # a few roundings of O(1) numbers
        # the CNTK's input kernel Σ_c x_cs²/C has mean 1 over the positions s
        diagonal = (x ** 2).sum(dim=1) / 3
        torch.testing.assert_close(diagonal.mean(dim=(1, 2)), torch.ones(x.shape[0], dtype=torch.float64),
                                   rtol=0, atol=1e-12)


def test_channel_standardize_formula(tmp_path):
    write_cifar(tmp_path)
    raw = load_dataset("cifar10", n_train=20, n_test=6, root=tmp_path, images=True, normalize="none")
    data = load_dataset("cifar10", n_train=20, n_test=6, root=tmp_path, images=True, normalize="channel_standardize")
    mean = raw.x_train.numpy().mean(axis=(0, 2, 3), keepdims=True)     # per channel, over train images and pixels
    std = raw.x_train.numpy().std(axis=(0, 2, 3), keepdims=True)       # population std (ddof 0)
    np.testing.assert_allclose(data.x_train.numpy(), (raw.x_train.numpy() - mean) / std, rtol=0, atol=1e-12)
    np.testing.assert_allclose(data.x_test.numpy(), (raw.x_test.numpy() - mean) / std, rtol=0, atol=1e-12)
    np.testing.assert_allclose(data.x_train.numpy().mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(data.x_train.numpy().std(axis=(0, 2, 3)), 1, atol=1e-12)


def test_channel_standardize_only_centres_a_constant_channel():
    x = torch.rand(4, 2, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[:, 1] = 0.25
    train, test = normalize_inputs(x, x[:2], "channel_standardize")
    assert torch.equal(train[:, 1], torch.zeros(4, 3, 3, dtype=torch.float64))
    torch.testing.assert_close(train[:, 0].std(correction=0), torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("grey", [1.0, 3 / 255])
def test_per_image_refuses_a_constant_image(grey):
    # 3/255 on 28×28: the float mean of 784 equal values misses them by a rounding (checked below),
    # which centring alone would leave as a nonzero image of ±1e-17 entries
    x = torch.full((3, 1, 28, 28), grey, dtype=torch.float64)
    x[0, 0, 0, 0] = 2.0
    assert grey == 1.0 or bool((x[1] - x[1].mean() != 0).any())
    with pytest.raises(ConfigError) as err:
        normalize_inputs(x, x, "per_image")
    assert err.value.field == "data.normalize" and "point 1 of the train split is constant" in str(err.value)


# --- arguments and configs --------------------------------------------------------------------

@pytest.mark.parametrize("name, kwargs, field, needles", [
    ("sphere", dict(images=True), "data.name", CLASSIFICATION_NAMES),
    ("digits", dict(images="yes"), "data.images", ("true or false",)),
    ("digits", dict(balanced=1), "data.balanced", ("true or false",)),
    ("gaussian", dict(normalize="channel_standardize"), "data.normalize", ("images", "standardize")),
])
def test_invalid_image_arguments_name_the_field(name, kwargs, field, needles):
    with pytest.raises(ConfigError) as err:
        load_dataset(name, **kwargs)
    assert err.value.field == field and all(needle in str(err.value) for needle in needles)


def test_data_configs_compose_and_match_load_dataset():
    # DataConfig's fields are load_dataset's arguments (the trainer passes them all by name), but
    # images, which the model decides (model=cnn wants images)
    parameters = set(inspect.signature(load_dataset).parameters) - {"images"}
    assert {f.name for f in dataclasses.fields(DataConfig)} == parameters
    for name in ("digits", "mnist", "fashion_mnist", "cifar10"):
        data = compose_train([f"data={name}"]).data
        assert data.name == name and data.balanced is True
        if name != "digits":
            assert data.root.endswith(f"/{name}") and data.targets == "onehot" and data.center_targets
