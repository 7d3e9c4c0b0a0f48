"""Data sets, synthetic and real, behind one interface.

    from ntklab.data import load_dataset
    data = load_dataset("sphere", n_train=128, dim=8, target="polynomial", degree=2, seed=0)
    data.x_train  # (128, 8) float64;  data.y_train  # (128, 1)

    images = load_dataset("mnist", n_train=500, root="data/mnist", images=True, targets="onehot",
                          center_targets=True)
    images.x_train  # (500, 1, 28, 28), 50 per class;  images.y_train  # (500, 10), entries 0.9 and -0.1

Synthetic (:mod:`~ntklab.data.synthetic`): circle, sphere, gaussian, parity. Real
(:mod:`~ntklab.data.real`, images of shape ``IMAGE_SHAPES[name]``): digits (bundled with
scikit-learn), mnist, fashion_mnist and cifar10 (read from ``root`` by :mod:`~ntklab.data.readers`).
Normalisations and target centring: :mod:`~ntklab.data.transforms`.
"""

from ntklab.data.dataset import Dataset
from ntklab.data.load import DATASET_NAMES, DEFAULT_NORMALIZATION, TARGET_KINDS, load_dataset
from ntklab.data.real import CLASSIFICATION_NAMES, IMAGE_SHAPES
from ntklab.data.synthetic import SYNTHETIC_NAMES, TARGETS, TEACHER_SEED_OFFSET
from ntklab.data.transforms import NORMALIZATIONS

__all__ = ["Dataset", "load_dataset", "DATASET_NAMES", "NORMALIZATIONS", "DEFAULT_NORMALIZATION",
           "SYNTHETIC_NAMES", "CLASSIFICATION_NAMES", "IMAGE_SHAPES", "TARGETS", "TARGET_KINDS", "TEACHER_SEED_OFFSET"]
