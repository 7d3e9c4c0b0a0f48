"""Validation of what the public API is given, shared by its functions: kernel inputs
(`check_inputs`, `check_kernel_scale`), a network's device and dtype (`check_device_dtype`) and a
learning rate (`check_learning_rate`). Each raises ValueError naming the argument."""

from __future__ import annotations

import math
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


def check_device_dtype(device, dtype) -> Tuple[torch.device, torch.dtype]:
    """``(device, dtype)`` of a network to build, checked: ValueError naming the argument for a
    device torch does not know (``"foo"``), a CUDA device on a machine without one, and a dtype
    that is not a floating-point torch.dtype (parameters must carry gradients).

    The one call that every network constructor makes (``build_mlp``, ``build_net``)."""
    if device is None:
        device = torch.device("cpu")
    else:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={str(device)!r}: this machine has no CUDA GPU (or torch was built without CUDA); "
                             "use device='cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device={str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or dtype.is_complex:
        raise ValueError(f"dtype must be a floating-point torch.dtype (torch.float32, torch.float64), got {dtype!r}")
    return device, dtype


def check_learning_rate(value, name: str = "learning_rate") -> float:
    """``value`` as a float after checking it is a finite number > 0: Python and NumPy numbers,
    0-d arrays and 0-d tensors are accepted; a bool (``True`` is not 1.0 here) is not."""
    import numbers

    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (Tensor, np.ndarray)) and value.dtype in
                                               (torch.bool, np.bool_)):
        raise ValueError(f"{name} must be a finite number > 0, got the bool {value!r}")
    if isinstance(value, (Tensor, np.ndarray)):
        if value.ndim != 0:
            raise ValueError(f"{name} must be a number (a 0-d tensor or array at most), got shape {tuple(value.shape)}")
        value = value.item()
    if not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a finite number > 0, got {type(value).__name__} {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def check_kernel_scale(diagonal: Tensor, name: str, x: Tensor) -> None:
    """Refuse inputs whose kernels overflow: ``diagonal`` holds k(x_i, x_i), the largest entries of
    their rows (|k(x, x')| ≤ √(k(x, x) k(x', x'))), so when they are finite every entry is."""
    finite = torch.isfinite(diagonal)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0, 0])
        largest = x[row].abs().max().item()
        raise ValueError(f"{name}: the kernels overflow {str(x.dtype).replace('torch.', '')} (row {row}, whose largest "
                         f"entry is {largest:.3g}); rescale the inputs")
