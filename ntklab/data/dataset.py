"""The one data-set type every loader returns and the trainer consumes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional, Tuple

import torch
from torch import Tensor


# eq=False: equality and hashing by identity; field-wise == on tensors has no single truth value.
@dataclass(frozen=True, eq=False)
class Dataset:
    """Train and test split of one data set.

    Attributes:
        name: the data set's name (one of ``DATASET_NAMES``).
        x_train: (N, d) inputs, or (N, C, H, W) images in torch's layout; y_train: (N, k) targets
            (k = 1 for scalar targets).
        x_test: (M, d) or (M, C, H, W) inputs, the same shape per point as x_train; y_test: (M, k) targets.
        labels_train, labels_test: (N,) and (M,) int64 class labels of a classification set
            (the original labels, 0..9), else None.
        extras: anything else a set carries, e.g. the circle's angles ``gamma_train`` (N,) and
            ``gamma_test`` (M,), or a classification set's ``classes`` (the order of one-hot columns).

    Loaders return float64 CPU tensors; :meth:`to` moves them.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    labels_train: Optional[Tensor] = None
    labels_test: Optional[Tensor] = None
    extras: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split, x, y, labels in (("train", self.x_train, self.y_train, self.labels_train),
                                    ("test", self.x_test, self.y_test, self.labels_test)):
            if x.dim() not in (2, 4) or y.dim() != 2:
                raise ValueError(f"x_{split} must be (N, d) or (N, C, H, W) and y_{split} (N, k), got shapes "
                                 f"{tuple(x.shape)} and {tuple(y.shape)}")
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"x_{split} has {x.shape[0]} rows but y_{split} has {y.shape[0]}")
            if labels is not None and tuple(labels.shape) != (x.shape[0],):
                raise ValueError(f"labels_{split} must have shape ({x.shape[0]},), got {tuple(labels.shape)}")
        if self.x_test.shape[1:] != self.x_train.shape[1:] or self.y_test.shape[1] != self.y_train.shape[1]:
            raise ValueError(
                f"train and test disagree in shape: x {tuple(self.x_train.shape)} vs {tuple(self.x_test.shape)}, "
                f"y {tuple(self.y_train.shape)} vs {tuple(self.y_test.shape)}")

    @property
    def in_shape(self) -> Tuple[int, ...]:
        """The shape of one input: (d,) or (C, H, W)."""
        return tuple(self.x_train.shape[1:])

    @property
    def in_dim(self) -> int:
        """The number of input features d = the product of :attr:`in_shape` (C·H·W for images)."""
        return math.prod(self.in_shape)

    @property
    def out_dim(self) -> int:
        """Number of target columns k."""
        return self.y_train.shape[1]

    @property
    def n_train(self) -> int:
        return self.x_train.shape[0]

    @property
    def n_test(self) -> int:
        return self.x_test.shape[0]

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "Dataset":
        """A copy with inputs and targets on ``device`` in ``dtype`` (None keeps the current one).

        Labels stay int64 and extras keep their dtype (they index and annotate, they are not
        fed to a network); both move to ``device``.
        """
        def data(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype)

        def meta(t):
            return t.to(device=device) if isinstance(t, Tensor) else t

        return replace(self, x_train=data(self.x_train), y_train=data(self.y_train),
                       x_test=data(self.x_test), y_test=data(self.y_test),
                       labels_train=meta(self.labels_train), labels_test=meta(self.labels_test),
                       extras={key: meta(value) for key, value in self.extras.items()})

    def flattened(self) -> "Dataset":
        """A copy with inputs reshaped to (N, d), d = :attr:`in_dim` (C order: channel, row, column);
        the same numbers. Flat inputs come back unchanged."""
        return replace(self, x_train=self.x_train.flatten(1), x_test=self.x_test.flatten(1))
