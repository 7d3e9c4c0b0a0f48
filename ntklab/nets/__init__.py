"""Finite networks built from an :class:`~ntklab.spec.ArchSpec`."""

from ntklab.nets.mlp import MLP, Dense, build_mlp

__all__ = ["MLP", "Dense", "build_mlp"]
