"""Which regime a gradient-descent run was in, read off its tracked numbers: lazy, catapult, edge of
stability, or diverged (Lewkowycz et al. 2020; Cohen et al. 2021).

With η the step size, N·k the train entries and the stability edge e = 2 (2(1 + β) with heavy-ball
momentum β), GD on the linearised net converges iff η·λ_max(Θ̂)/(Nk) < e, and on the loss's
quadratic model iff η·λ_max(H) < e. A finite net:

    lazy                below the edge; the kernel barely moves and the loss falls monotonically
    catapult            above the edge at θ_0: the loss spikes, the kernel's top eigenvalue falls
                        until η·λ_max(Θ̂)/(Nk) < e, and training converges there (Lewkowycz et al.)
    edge_of_stability   the sharpness rises (or falls) to e/η and hovers there while the loss keeps
                        falling non-monotonically (Cohen et al.)
    diverged            the run ended as diverged (loss not finite, or above divergence_factor × L_0)
    other               none of these, e.g. the rich regime below the edge: the kernel moves more than
                        lazy allows without a spike

The rules, in this order, with every number from :data:`THRESHOLDS` (the one place they are set):

    1. diverged           status diverged
    2. edge_of_stability  the median of η·sharpness/e over the log steps in the last ``late`` of the
                          run is within 1 ± ``edge_band``, and η·sharpness reaches e at one of them
                          (a run that converges below the edge, as after a catapult, stays under it)
    3. catapult           the run starts at or above the edge, η·λ_max(Θ̂_0)/(Nk) ≥ ``at_edge``·e (below
                          it the linearised net converges and a spike is something else), the train loss
                          exceeds (1 + ``spike``)·L_0 at some step, η·λ_max(Θ̂_T)/(Nk) < e at the last
                          log step (so the kernel's top fell), and the loss ends below ``trained``·L_0
    4. lazy               the loss never rises between consecutive log steps (by more than
                          ``loss_rise``) nor above (1 + ``loss_rise``)·L_0 at any step (the peak, for
                          full-batch runs), and kernel_change stays at most ``lazy_kernel_change``
    5. other

A rule whose quantity was not tracked (``sharpness`` for 2, ``ntk_top_eigenvalues`` for 3,
``kernel_change`` for 4) is skipped and named in ``missing``. The peak loss is the largest of the
logged losses and, for full-batch runs, the trainer's own per-step loss (a spike lasts a few steps
and may fall between log steps).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

REGIMES = ("lazy", "catapult", "edge_of_stability", "diverged", "other")


@dataclass(frozen=True)
class Thresholds:
    """The numbers the classification uses (see the module docstring for where each enters)."""

    lazy_kernel_change: float = 0.1   # lazy: ‖Θ̂_t − Θ̂_0‖/‖Θ̂_0‖ at most this at every log step
    loss_rise: float = 1e-3           # a rise: a log step's loss above the previous one's by more than this fraction
    at_edge: float = 1 - 1e-6         # catapult: η·λ_max(Θ̂_0)/(Nk) ≥ at_edge·e (η = η_max itself counts,
                                      # whichever way its last bit rounds) ...
    spike: float = 0.1                # ... the loss exceeds (1 + spike)·L_0 at some step ...
    trained: float = 0.5              # ... and ends below trained·L_0 (it learns; a net whose units die does not)
    edge_band: float = 0.1            # edge of stability: late median of η·sharpness within e·(1 ± edge_band)
    late: float = 0.5                 # "late": the log steps in the last half of the run (step ≥ (1 − late)·T)
    late_points: int = 3              # fewest log steps in the late window for rule 2 to apply


THRESHOLDS = Thresholds()


def stability_edge(momentum: float = 0.0) -> float:
    """e = 2(1 + β): GD with heavy-ball momentum β on a quadratic of curvature λ is stable iff ηλ < e."""
    return 2.0 * (1.0 + momentum)


def _number(value) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _rises(losses: Sequence[float], tolerance: float) -> bool:
    return any(b > a * (1 + tolerance) for a, b in zip(losses, losses[1:]))


def classify(records: List[Dict], *, status: str, momentum: float = 0.0, loss_peak: Optional[float] = None,
             thresholds: Thresholds = THRESHOLDS) -> Dict[str, object]:
    """The regime of a run from its metrics records (those with a ``diverged`` flag are skipped), its
    status, its momentum β (the edge is 2(1 + β)) and, when known, the largest loss of any step.

    Returns {"label": one of :data:`REGIMES`, "reason": a sentence, "evidence": the numbers the rules
    read, "missing": tracked quantities a skipped rule needed, "thresholds": the thresholds used}.
    """
    edge = stability_edge(momentum)
    records = [r for r in records if not r.get("diverged") and _number(r.get("train_loss")) is not None]
    losses = [float(r["train_loss"]) for r in records]
    evidence: Dict[str, object] = {"stability_edge": edge}
    missing: List[str] = []
    out = {"evidence": evidence, "missing": missing, "thresholds": asdict(thresholds)}

    def result(label: str, reason: str) -> Dict[str, object]:
        return {"label": label, "reason": reason, **out}

    if not records:
        return result("diverged" if status == "diverged" else "other", "no measurement was recorded")
    loss_0 = losses[0]
    peak = max([x for x in losses if math.isfinite(x)] + ([loss_peak] if loss_peak is not None else []))
    evidence.update(initial_loss=loss_0, final_loss=losses[-1], peak_loss=peak, peak_over_initial=peak / loss_0 if loss_0 > 0 else None,
                    loss_monotone=(not _rises(losses, thresholds.loss_rise)
                                   and peak <= (1 + thresholds.loss_rise) * loss_0))
    kernel_change = [v for v in (_number(r.get("kernel_change")) for r in records) if v is not None]
    if kernel_change:
        evidence["max_kernel_change"] = max(kernel_change)
    eta_ntk = [(r["step"], v) for r in records if (v := _number(r.get("eta_ntk"))) is not None]
    if eta_ntk:
        evidence["initial_eta_ntk"], evidence["final_eta_ntk"] = eta_ntk[0][1], eta_ntk[-1][1]
    last_step = records[-1]["step"]
    late = [r for r in records if r["step"] >= (1 - thresholds.late) * last_step]
    late_sharpness = [v for v in (_number(r.get("eta_sharpness")) for r in late) if v is not None]
    if late_sharpness:
        evidence["late_eta_sharpness"] = statistics.median(late_sharpness)
        evidence["late_max_eta_sharpness"] = max(late_sharpness)

    if status == "diverged":
        return result("diverged", "the run diverged")
    # 2. edge of stability
    if not late_sharpness:
        missing.append("sharpness")
    elif len(late_sharpness) >= thresholds.late_points:
        ratio = evidence["late_eta_sharpness"] / edge
        if abs(ratio - 1) <= thresholds.edge_band and evidence["late_max_eta_sharpness"] >= edge:
            return result("edge_of_stability", f"η·sharpness settled at {evidence['late_eta_sharpness']:.3g}, within "
                          f"{thresholds.edge_band:.0%} of {edge:g}, and reached {edge:g} late in the run")
    # 3. catapult
    spiked = peak > (1 + thresholds.spike) * loss_0
    if not eta_ntk:
        missing.append("ntk_top_eigenvalues")
    elif (evidence["initial_eta_ntk"] >= thresholds.at_edge * edge and spiked and evidence["final_eta_ntk"] < edge
          and losses[-1] < thresholds.trained * loss_0):
        return result("catapult", f"the loss rose to {peak / loss_0:.3g}× its initial value, then η·λ_max(Θ̂)/(Nk) "
                      f"fell from {evidence['initial_eta_ntk']:.3g} to {evidence['final_eta_ntk']:.3g} < {edge:g}")
    # 4. lazy
    if not kernel_change:
        missing.append("kernel_change")
    elif evidence["loss_monotone"] and evidence["max_kernel_change"] <= thresholds.lazy_kernel_change:
        return result("lazy", f"the loss fell monotonically and kernel_change stayed at most "
                      f"{evidence['max_kernel_change']:.3g} ≤ {thresholds.lazy_kernel_change:g}")
    return result("other", "none of the rules for lazy, catapult and edge of stability holds"
                  + (f" (not checked: {', '.join(missing)} not tracked)" if missing else ""))
