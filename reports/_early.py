"""Trials that a search stopped early (MO-ASHA, issue 13): kept apart from the full-fidelity
trials that make the front, with the compute they saved."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

import pandas as pd

STOPPED_COLUMNS = {
    "early_stopped": "early_stopped",
    "stopped_at_epoch": "stopped_at_epoch",
    "early_stop_reason": "early_stop_reason",
}


def stopped_mask(trials: pd.DataFrame) -> pd.Series:
    """True for the trials the search stopped early (tag ``early_stopped=true``)."""
    if "early_stopped" not in trials.columns:
        return pd.Series(False, index=trials.index)
    return trials["early_stopped"].astype(str).eq("true")


@dataclass(frozen=True)
class StoppedTrials:
    """``count`` trials stopped early; the trial-seconds they took (``spent``) and an
    estimate of what they saved: per stopped trial, the epochs it did not train times the
    mean seconds per epoch of the full-fidelity trials (``train_seconds / epochs``)."""

    count: int
    spent: float
    saved: float
    by_epoch: dict[int, int]

    @classmethod
    def of(cls, trials: pd.DataFrame) -> StoppedTrials:
        stopped = trials[stopped_mask(trials)]
        if stopped.empty:
            return cls(0, 0.0, 0.0, {})
        epochs = pd.to_numeric(trials.get("epochs"), errors="coerce")
        at = pd.to_numeric(stopped["stopped_at_epoch"], errors="coerce")
        full = trials[~stopped_mask(trials) & trials["status"].eq("FINISHED")]
        per_epoch = (
            pd.to_numeric(full.get("train_seconds"), errors="coerce")
            / pd.to_numeric(full.get("epochs"), errors="coerce")
        ).mean()
        left = (epochs.loc[stopped.index] - at).clip(lower=0).sum()
        saved = float(left * per_epoch) if math.isfinite(per_epoch) else math.nan
        spent = pd.to_numeric(stopped.get("trial_seconds"), errors="coerce").sum()
        counts = at.dropna().astype(int).value_counts().sort_index()
        return cls(len(stopped), float(spent), saved, {int(k): int(v) for k, v in counts.items()})

    def html(self) -> str:
        if not self.count:
            return "<p>No trial was stopped early.</p>"
        where = ", ".join(f"{n} at epoch {e}" for e, n in self.by_epoch.items())
        saved = "n/a" if math.isnan(self.saved) else f"{self.saved:.0f} s"
        return (
            f"<p>{self.count} trials were stopped early ({html.escape(where)}; epoch 0: before "
            f"training, as dominated). They took {self.spent:.0f} trial-seconds (counted in the "
            f"cost above) and saved about {html.escape(saved)} of fine-tuning (the epochs they "
            "did not train, at the finished trials' mean seconds per epoch). They are not on "
            "the front nor in the hypervolume, which use full-fidelity trials only; the "
            "table of all trials lists them with status KILLED.</p>"
        )
