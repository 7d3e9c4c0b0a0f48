"""Validation of the tensors given to kernel functions (`check_inputs`), shared by the analytic and
the empirical kernels."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor


def check_inputs(x1, x2=None, *, in_dim: Optional[int] = None, in_shape: Optional[Tuple[int, ...]] = None,
                 dtype: Optional[torch.dtype] = None, device=None) -> Tuple[Tensor, Optional[Tensor]]:
    """Return ``(x1, x2)`` as tensors after checking they are usable kernel inputs.

    x1: (N1, d) vectors or (N1, C, H, W) images; x2: the same with N2 rows, or None. Raises
    ValueError naming the problem for: another rank, an empty batch, zero features, mismatched
    shapes (between x1 and x2, or against the model's ``in_dim`` / ``in_shape``) and NaN or
    infinite entries. ``dtype``/``device``, if given, convert both; otherwise tensors keep theirs
    and arrays become float64 CPU tensors.
    """
    x1 = _as_tensor(x1, "x1", dtype, device)
    x2 = None if x2 is None else _as_tensor(x2, "x2", dtype, device)
    if x2 is not None and x2.shape[1:] != x1.shape[1:]:
        what = "feature dims" if x1.dim() == 2 and x2.dim() == 2 else "shapes"
        raise ValueError(f"x1 and x2 have different {what}: x1 is {tuple(x1.shape)}, x2 is {tuple(x2.shape)}")
    if in_dim is not None and (x1.dim() != 2 or x1.shape[1] != in_dim):
        raise ValueError(f"inputs have shape {tuple(x1.shape[1:])} ({x1.shape[1]} features) but the model expects "
                         f"in_dim={in_dim}")
    if in_shape is not None and tuple(x1.shape[1:]) != tuple(in_shape):
        kind = "images" if len(in_shape) == 3 else "vectors"
        raise ValueError(f"inputs have shape {tuple(x1.shape[1:])} per item but the net was built for {kind} of "
                         f"shape {tuple(in_shape)}")
    return x1, x2


def _as_tensor(x, name: str, dtype, device) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.dim() not in (2, 4):
        raise ValueError(f"{name} must have shape (N, d) (vectors) or (N, C, H, W) (images), got shape "
                         f"{tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}): need at least one input")
    if min(x.shape[1:]) == 0:
        raise ValueError(f"{name} has zero features (shape {tuple(x.shape)})")
    if not (x.is_floating_point() or dtype is not None):
        x = x.to(torch.float64)
    if dtype is not None or device is not None:
        x = x.to(dtype=dtype or x.dtype, device=device)
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = (~finite).nonzero()[0].tolist()
        where = f"column {bad[1]}" if len(bad) == 2 else f"index {tuple(bad[1:])}"
        raise ValueError(f"{name} has NaN or infinite entries (first at row {bad[0]}, {where})")
    return x
