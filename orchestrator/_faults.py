"""Stop a search whose first trials all fail: a systematic error should cost minutes, not hours."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from ray.tune import Stopper

from orchestrator._counts import ERROR_KEY, FAILED_KEY


class FirstTrialsAllFail(Stopper):
    """Stop everything when the first ``n`` trials to finish all failed (``n = 0``: never)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.finished = 0
        self.reasons: list[str] = []
        self.triggered = False

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if self.finished >= self.n or self.n == 0:
            return False
        self.finished += 1
        if result.get(FAILED_KEY):
            self.reasons.append(str(result.get(ERROR_KEY, "unknown error")))
        if self.finished == self.n and len(self.reasons) == self.n:
            self.triggered = True
        return False

    def stop_all(self) -> bool:
        return self.triggered

    def replay(self, results: Iterable[dict[str, Any]]) -> None:
        """Apply the rule to results seen elsewhere, in order: on ``--resume`` Ray Tune restores
        and consults the stopper it saved when the search started, not this one."""
        for result in results:
            self(str(result.get("trial_id", "")), result)

    def common_reason(self) -> str:
        """The most frequent first line among the failures, with its count."""
        if not self.reasons:
            return ""
        lines = Counter(r.strip().splitlines()[0] if r.strip() else r for r in self.reasons)
        reason, count = lines.most_common(1)[0]
        return f"{count} of {len(self.reasons)} failed with: {reason}"
