"""Infinite-width kernels: closed forms and quadrature (see :mod:`ntklab.kernels.analytic`)."""

from ntklab.kernels.analytic import KERNEL_METHODS, Kernels, analytic_kernels, limit_problem, pixel_kernels
from ntklab.kernels.quadrature import DEFAULT_QUADRATURE_DEGREE, quadrature_dual

__all__ = ["Kernels", "analytic_kernels", "limit_problem", "pixel_kernels", "quadrature_dual", "KERNEL_METHODS",
           "DEFAULT_QUADRATURE_DEGREE"]
