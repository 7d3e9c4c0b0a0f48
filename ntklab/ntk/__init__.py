"""Empirical kernels of finite networks and their Monte Carlo averages."""

from ntklab.ntk.empirical import (DEFAULT_MEMORY_BUDGET, NNGP_METHODS, NTK_METHODS, OUTPUT_MODES,
                                  empirical_nngp, empirical_ntk)
from ntklab.ntk.monte_carlo import monte_carlo_kernels

__all__ = ["empirical_ntk", "empirical_nngp", "monte_carlo_kernels", "NTK_METHODS", "NNGP_METHODS",
           "OUTPUT_MODES", "DEFAULT_MEMORY_BUDGET"]
