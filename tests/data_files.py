"""Small data files in the published formats, written by the tests (nothing is downloaded).

Every writer makes images whose pixels are a formula of their position, so a test can check where
each pixel landed: IDX (MNIST, Fashion-MNIST; plain or .gz), MNIST's classic mnist.pkl.gz pickle
and the CIFAR-10 python batches.
"""

import gzip
import pickle
import struct

import numpy as np

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_NAMES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
TRAIN_LABELS = tuple(range(6))      # the default IDX files: train labels 0..5,
TEST_LABELS = (9, 8, 7, 6)          # test labels 9..6, one image each, so a label names its image


def idx_bytes(array, magic):
    """An IDX file's bytes: big-endian magic, the sizes, then the uint8 data in C order."""
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def mnist_images(n, offset):
    """n distinct 28×28 uint8 images: pixel (i, j) of image m is (7i + j + 31(offset + m)) mod 255 + 1, none blank."""
    pixels = (7 * np.arange(28)[:, None] + np.arange(28)[None, :])[None] + 31 * (offset + np.arange(n))[:, None, None]
    return (pixels % 255 + 1).astype(np.uint8)


def write_idx_set(folder, gz=False, train_labels=TRAIN_LABELS, test_labels=TEST_LABELS):
    """The four IDX files of MNIST or Fashion-MNIST in ``folder``; train image m is ``mnist_images(n, 0)[m]``,
    test image m is ``mnist_images(n, 100)[m]``. Returns those images, {"train": (n, 28, 28), "test": ...}."""
    folder.mkdir(parents=True, exist_ok=True)
    images = {"train": mnist_images(len(train_labels), 0), "test": mnist_images(len(test_labels), 100)}
    content = {
        IDX_NAMES[0]: idx_bytes(images["train"], 0x803),
        IDX_NAMES[1]: idx_bytes(np.array(train_labels, dtype=np.uint8), 0x801),
        IDX_NAMES[2]: idx_bytes(images["test"], 0x803),
        IDX_NAMES[3]: idx_bytes(np.array(test_labels, dtype=np.uint8), 0x801),
    }
    for name, raw in content.items():
        if gz:
            with gzip.open(folder / (name + ".gz"), "wb") as file:
                file.write(raw)
        else:
            (folder / name).write_bytes(raw)
    return images


def write_mnist_pickle(path, images, labels, n_valid):
    """The classic mnist.pkl.gz: ((train_x, train_y), (valid_x, valid_y), (test_x, test_y)), x float32
    (n, 784) = byte/256, y int64; ``images``/``labels`` are {"train", "test"} and the last ``n_valid``
    train images form the valid part, as in the original. Protocol 2, as the Python 2 original."""
    def pair(x, y):
        return (x.reshape(len(x), -1).astype(np.float32) / np.float32(256), np.asarray(y, dtype=np.int64))

    cut = len(images["train"]) - n_valid
    content = (pair(images["train"][:cut], labels["train"][:cut]),
               pair(images["train"][cut:], labels["train"][cut:]),
               pair(images["test"], labels["test"]))
    write_pickle_gz(path, content)


def write_pickle_gz(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as file:
        pickle.dump(content, file, protocol=2)


def cifar_rows(first, n):
    """n distinct uint8 rows of 3072 pixels: pixel p of global row r is (5r + p + 85c) mod 256, c = p // 1024
    its channel (0 red, 1 green, 2 blue), so the three planes of an image differ."""
    index = first + np.arange(n)
    pixels = np.arange(3072)
    return ((index[:, None] * 5 + pixels[None, :] + 85 * (pixels // 1024)[None, :]) % 256).astype(np.uint8)


def write_cifar(folder, rows=6, protocol=2):
    """Batches of ``rows`` rows; global row r (train 0..5·rows−1, test after) has label r mod 10;
    pickled with ``protocol``: 2 or 5 as Python 3 and NumPy 2 write them (5: a batch saved again),
    or "python2", the bytes Python 2 and NumPy 1.x wrote the official files with."""
    folder.mkdir(parents=True, exist_ok=True)
    for b, name in enumerate(CIFAR_NAMES):
        index = b * rows + np.arange(rows)
        batch = {b"batch_label": b"test", b"data": cifar_rows(b * rows, rows),
                 b"labels": [int(r % 10) for r in index]}
        if protocol == "python2":
            (folder / name).write_bytes(python2_pickle(batch))
            continue
        with open(folder / name, "wb") as file:
            pickle.dump(batch, file, protocol=protocol)


def python2_pickle(batch):
    """A dict of byte strings, a uint8 array and a list of small ints as Python 2's pickle protocol 2
    wrote it: its str objects as BINSTRING (read back as bytes under encoding="bytes", the byte
    order of the array's dtype included) and the array as NumPy 1.x's _reconstruct + state."""
    def string(raw):
        return b"T" + struct.pack("<I", len(raw)) + raw

    def small_int(n):
        return b"K" + bytes([n])

    def value(item):
        if isinstance(item, bytes):
            return string(item)
        if isinstance(item, list):
            return b"](" + b"".join(small_int(n) for n in item) + b"e"
        array = np.ascontiguousarray(item)
        assert array.dtype == np.uint8
        shape = b"(" + b"".join(b"J" + struct.pack("<i", n) for n in array.shape) + b"t"
        dtype = (b"cnumpy\ndtype\n" + string(b"u1") + small_int(0) + small_int(1) + b"\x87R"
                 + b"(" + small_int(3) + string(b"|") + b"NNN" + (b"J" + struct.pack("<i", -1)) * 2 + small_int(0) + b"tb")
        return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + small_int(0) + b"\x85" + string(b"b")
                + b"\x87R" + b"(" + small_int(1) + shape + dtype + b"\x89" + string(array.tobytes()) + b"tb")

    return b"\x80\x02}(" + b"".join(string(key) + value(item) for key, item in batch.items()) + b"u."
