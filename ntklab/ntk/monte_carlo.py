"""Monte Carlo estimates of the kernels: averages of empirical kernels over independent nets.

:func:`monte_carlo_kernels` mirrors :func:`ntklab.kernels.analytic_kernels` (same spec and
inputs, same :class:`~ntklab.kernels.Kernels` result), so every closed form has a simulated twin:

    Σ_MC = (1/M) Σ_m Σ̂_m,   Θ_MC = (1/M) Σ_m Θ̂_m,     nets m = 0..M-1 seeded seed + m.

Under "ntk" each Θ̂_m deviates from Θ by O(width^(-1/2)) (Jacot et al. 2018, Lee et al. 2019), so
the relative error of the average falls like width^(-1/2) / √M.
"""

from __future__ import annotations

from typing import Union

import torch

from ntklab.tensor_checks import check_inputs
from ntklab.kernels.analytic import Kernels
from ntklab.layers.core import Layer
from ntklab.nets import build_mlp, build_net
from ntklab.ntk.empirical import DEFAULT_MEMORY_BUDGET, empirical_nngp, empirical_ntk
from ntklab.spec import ArchSpec


def monte_carlo_kernels(arch: Union[Layer, ArchSpec], x1, x2=None, *, n_samples: int = 16, seed: int = 0,
                        device=None, dtype: torch.dtype = torch.float64, ntk_method: str = "structured",
                        nngp_method: str = "readout",
                        memory_budget: int = DEFAULT_MEMORY_BUDGET) -> Kernels:
    """Average empirical NNGP and NTK (per output, "mean" mode) of ``n_samples`` nets of ``arch``
    (an :mod:`ntklab.layers` composition or an ArchSpec), on vectors (N, d) or images (N, C, H, W).

    The nets are built in ``dtype`` on ``device``; the averages are returned in float64 with
    shape (N1, N2). ``nngp_method`` "readout" (default) or "outputs", see
    :func:`ntklab.ntk.empirical_nngp`.
    """
    if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 1:
        raise ValueError(f"n_samples must be an integer >= 1, got {n_samples!r}")
    x1, x2 = check_inputs(x1, x2, dtype=dtype, device=device)
    nngp = ntk = None
    for m in range(n_samples):
        if isinstance(arch, ArchSpec):
            net = build_mlp(arch, x1.shape[1], seed=seed + m, device=x1.device, dtype=dtype)
        else:
            net = build_net(arch, x1.shape[1:], seed=seed + m, device=x1.device, dtype=dtype)
        sample_nngp = empirical_nngp(net, x1, x2, method=nngp_method).to(torch.float64)
        sample_ntk = empirical_ntk(net, x1, x2, method=ntk_method,
                                   memory_budget=memory_budget).to(torch.float64)
        nngp = sample_nngp if nngp is None else nngp.add_(sample_nngp)
        ntk = sample_ntk if ntk is None else ntk.add_(sample_ntk)
    return Kernels(nngp / n_samples, ntk / n_samples)
