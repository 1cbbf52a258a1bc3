"""The knobs a trials table shows when the search's space was not recorded."""

from __future__ import annotations

import pandas as pd

from reports import varying_knobs
from searchspace import KNOBS


def test_without_a_recorded_space_every_searchable_knob_that_varies_is_shown() -> None:
    trials = pd.DataFrame(
        {
            "lr": [1e-3, 2e-3],
            "bits": [8, 8],
            "pruning_scope": ["global", "layer"],
            "status": ["FINISHED", "FINISHED"],
        }
    )
    assert varying_knobs({}, trials) == ["lr", "pruning_scope"]
    # The fallback is the schema's own list of knobs, so a new knob is never left out.
    assert {"lr", "pruning_scope", "quant_scheme"} <= set(KNOBS)
