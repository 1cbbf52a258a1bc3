"""The base of every config model: strict types, finite floats, no unknown fields, frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    # strict: a count is a whole number (not true, not "3", not 3.0), a float a number (an int
    # is fine) and a name a string; allow_inf_nan=False: every float knob and setting is finite.
    # Together they hold for every field of every model (tests/searchspace/test_strict_types.py).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
