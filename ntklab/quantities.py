"""The names of the quantities a training run tracks: the one registry the config, the trainer's
summary and the run figures derive their lists from.

    train_loss, test_loss   recorded at every log step
    param_drift             ‖θ_t − θ_0‖ / ‖θ_0‖ (and per layer, ``param_drift_layers``)
    kernel_change           ‖Θ̂_t − Θ̂_0‖_F / ‖Θ̂_0‖_F on the probe set
    kernel_to_limit         ‖Θ̂_t − Θ‖_F / ‖Θ‖_F on the probe set (Θ the analytic limit)
    pred_gap_analytic       RMS of f_t(x*) − the analytic NTK's prediction, over the test set
    pred_gap_linear         RMS of f_t(x*) − the linearised network's prediction

How each is measured is :mod:`ntklab.train.tracking`'s business; this module holds names only,
so the config and the figures can import it without importing training code.
"""

from __future__ import annotations

from typing import Tuple

LOSSES: Tuple[str, ...] = ("train_loss", "test_loss")
# what ``track.quantities`` chooses from (all by default), in the order figures draw them
OPTIONAL: Tuple[str, ...] = ("param_drift", "kernel_change", "kernel_to_limit", "pred_gap_analytic",
                             "pred_gap_linear")
# every scalar quantity of a metrics record that the summary reports the maximum of
TRACKED: Tuple[str, ...] = LOSSES + OPTIONAL
