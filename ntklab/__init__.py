"""ntklab: finite-width networks against their infinite-width Neural Tangent Kernel, in PyTorch.

    from ntklab import layers as nl, ArchSpec, build_net, build_mlp, analytic_kernels, empirical_ntk
"""

from ntklab import layers
from ntklab.activations import ACTIVATION_NAMES, Activation, get_activation
from ntklab.kernels import Kernels, analytic_kernels
from ntklab.nets import MLP, Net, build_mlp, build_net
from ntklab.ntk import empirical_nngp, empirical_ntk, monte_carlo_kernels
from ntklab.spec import PARAMETRIZATIONS, ArchSpec

__version__ = "0.1.0"

__all__ = ["layers", "ArchSpec", "build_net", "build_mlp", "Net", "MLP", "analytic_kernels", "Kernels",
           "empirical_ntk", "empirical_nngp", "monte_carlo_kernels", "Activation", "get_activation",
           "ACTIVATION_NAMES", "PARAMETRIZATIONS", "__version__"]
