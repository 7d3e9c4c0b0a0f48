"""Training runs: the gradient-descent loop (:mod:`.trainer`) and what it measures (:mod:`.tracking`)."""

from ntklab.train.trainer import log_schedule, run
from ntklab.train.stability import classify
from ntklab.train.tracking import ReferenceKernels, SpectrumTracker, Tracker, reference_kernels

__all__ = ["run", "log_schedule", "Tracker", "SpectrumTracker", "ReferenceKernels", "reference_kernels", "classify"]
