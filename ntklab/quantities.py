"""The names of the quantities a training run tracks: the one registry the config, the trainer's
summary and the run figures derive their lists from.

    train_loss, test_loss   recorded at every log step
    param_drift             ‖θ_t − θ_0‖ / ‖θ_0‖ (and per layer, ``param_drift_layers``)
    kernel_change           ‖Θ̂_t − Θ̂_0‖_F / ‖Θ̂_0‖_F on the probe set
    kernel_to_limit         ‖Θ̂_t − Θ‖_F / ‖Θ‖_F on the probe set (Θ the analytic limit)
    pred_gap_analytic       RMS of f_t(x*) − the analytic NTK's prediction, over the test set
    pred_gap_linear         RMS of f_t(x*) − the linearised network's prediction

Opt-in (not in the default ``track.quantities``; on the spectrum set, the train set unless
``track.spectrum_points``, of N points and k outputs):

    ntk_top_eigenvalues     the top eigenvalues of Θ̂_t; records ``ntk_top_eigenvalues`` (a list),
                            ``ntk_max_eigenvalue`` λ_max(Θ̂_t) and ``eta_ntk`` = η·λ_max(Θ̂_t)/(Nk)
                            (2 at the step size where GD on the linearised net stops converging)
    sharpness               the top eigenvalues of the train loss's Hessian H (Lanczos);
                            records ``sharpness`` λ_max(H), ``hessian_top_eigenvalues`` (a list),
                            ``eta_sharpness`` = η·λ_max(H) (2 at the edge of stability) and
                            ``lanczos_steps`` (Hessian-vector products made)
    gauss_newton_share      vᵀGv / λ_max(H) for the top eigenvector v of H, G = JᵀJ/(Nk) its
                            Gauss–Newton part (it needs the Lanczos run of ``sharpness``, whose
                            fields it records too)

How each is measured is :mod:`ntklab.train.tracking`'s business; this module holds names only,
so the config and the figures can import it without importing training code.
"""

from __future__ import annotations

from typing import Dict, Tuple

LOSSES: Tuple[str, ...] = ("train_loss", "test_loss")
# what ``track.quantities`` holds by default, in the order figures draw them: the distances from the
# kernel regime (drift.png draws these)
DEFAULT: Tuple[str, ...] = ("param_drift", "kernel_change", "kernel_to_limit", "pred_gap_analytic",
                            "pred_gap_linear")
# opt-in: the spectra of the kernel and of the loss's Hessian (each costs more than all of DEFAULT)
SPECTRAL: Tuple[str, ...] = ("ntk_top_eigenvalues", "sharpness", "gauss_newton_share")
# what ``track.quantities`` chooses from
OPTIONAL: Tuple[str, ...] = DEFAULT + SPECTRAL
# the scalar fields each spectral quantity writes into a metrics record (lists beside them are not scalars)
SPECTRAL_FIELDS: Dict[str, Tuple[str, ...]] = {
    "ntk_top_eigenvalues": ("ntk_max_eigenvalue", "eta_ntk"),
    "sharpness": ("sharpness", "eta_sharpness"),
    "gauss_newton_share": ("gauss_newton_share",)}
# every scalar quantity of a metrics record that the summary reports the maximum of
TRACKED: Tuple[str, ...] = LOSSES + DEFAULT + tuple(f for name in SPECTRAL for f in SPECTRAL_FIELDS[name])
