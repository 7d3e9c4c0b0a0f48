"""Data sets, synthetic and real, behind one interface.

    from ntklab.data import load_dataset
    data = load_dataset("sphere", n_train=128, dim=8, target="polynomial", degree=2, seed=0)
    data.x_train  # (128, 8) float64;  data.y_train  # (128, 1)

Synthetic (:mod:`~ntklab.data.synthetic`): circle, sphere, gaussian, parity. Real
(:mod:`~ntklab.data.real`): digits (bundled with scikit-learn), mnist and cifar10 (read from
``root`` by :mod:`~ntklab.data.readers`).
"""

from ntklab.data.dataset import Dataset
from ntklab.data.load import DATASET_NAMES, DEFAULT_NORMALIZATION, TARGET_KINDS, load_dataset
from ntklab.data.real import CLASSIFICATION_NAMES
from ntklab.data.synthetic import SYNTHETIC_NAMES, TARGETS, TEACHER_SEED_OFFSET
from ntklab.data.transforms import NORMALIZATIONS

__all__ = ["Dataset", "load_dataset", "DATASET_NAMES", "NORMALIZATIONS", "DEFAULT_NORMALIZATION",
           "SYNTHETIC_NAMES", "CLASSIFICATION_NAMES", "TARGETS", "TARGET_KINDS", "TEACHER_SEED_OFFSET"]
