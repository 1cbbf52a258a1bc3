"""The ``latency`` section of a config: how and where an artifact's latency is measured."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from searchspace._strict import Strict

_RAY_BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


class Latency(Strict):
    """How an artifact's batch-1 latency is measured in ONNX Runtime, and where.

    Timing: ``warmup`` untimed runs, then at least ``repeats`` timed runs in blocks; more blocks
    while the block medians' coefficient of variation is above ``target_cv``, up to
    ``max_repeats`` (``None``: 5 x ``repeats``); ``threads`` intra-op threads.

    Place: ``where: actor`` (default) measures every artifact of a search, the baseline's
    included, in one Ray actor that takes one measurement at a time; it reserves ``cpus`` CPUs
    (0: none) and the custom Ray ``resources`` given, which pin it to the nodes that have them
    (e.g. ``{deploy_cpu: 1}``). ``where: inline`` measures in each trial's own process.
    ``isolation``: how the trials on the meter's machine are kept from disturbing it.
    ``pause``: while a measurement runs they wait at their next training step (a lock on the
    node). ``cores``: the meter's timing thread holds ``meter_cores`` cores of its node
    (``max(cpus, threads)``) alone; the trials there, the meter's other threads and, where the
    search starts Ray, everything Ray starts keep to the other cores; nobody pauses. ``none``:
    no isolation. ``auto`` (default): ``cores`` on a node with at least ``meter_cores`` + one
    trial's CPUs + 1 spare core (and ``where: actor`` and a whole ``cpus``), else ``pause``
    (orchestrator._isolation). ``pause_trials`` is the older spelling: true is ``pause``,
    false ``none``.
    """

    warmup: Annotated[int, Field(ge=0)] = 20
    repeats: Annotated[int, Field(ge=5)] = 200
    max_repeats: Annotated[int, Field(ge=5)] | None = None
    target_cv: Annotated[float, Field(gt=0, le=1)] = 0.05
    threads: Annotated[int, Field(ge=1)] = 1
    where: Literal["actor", "inline"] = "actor"
    cpus: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    resources: dict[str, Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        default_factory=dict
    )
    isolation: Literal["auto", "pause", "cores", "none"] = "auto"
    pause_trials: bool | None = None
    # A measurement whose block medians' CV stays above target_cv is taken again, up to this
    # many times, before its trial can enter the front (0: never).
    remeasure: Annotated[int, Field(ge=0, le=20)] = 2

    @model_validator(mode="before")
    @classmethod
    def _pause_trials(cls, data: Any) -> Any:
        """``pause_trials`` (the older setting) says ``isolation`` unless that is given too."""
        if not isinstance(data, dict) or not isinstance(data.get("pause_trials"), bool):
            return data
        implied = "pause" if data["pause_trials"] else "none"
        given = data.get("isolation")
        if given is None:
            return {**data, "isolation": implied}
        if given != implied:
            raise ValueError(
                f"pause_trials: {str(data['pause_trials']).lower()} means isolation: {implied}, "
                f"but isolation is {given!r}; remove pause_trials (isolation replaces it)"
            )
        return data

    @model_validator(mode="after")
    def _isolation(self) -> Latency:
        if self.isolation != "cores":
            return self
        if self.where == "inline":
            raise ValueError(
                "isolation 'cores' pins the latency actor to its own cores, but where is "
                "'inline' (each trial measures in its own process); set where: actor, or "
                "isolation: pause"
            )
        if self.cpus != int(self.cpus):
            raise ValueError(
                f"isolation 'cores' pins the latency actor to whole cores, but cpus is "
                f"{self.cpus:g}; set cpus to a whole number (e.g. 1)"
            )
        if 0 < self.cpus < self.threads:
            raise ValueError(
                f"isolation 'cores' gives the latency actor cpus={self.cpus:g} cores, fewer "
                f"than its threads={self.threads}; raise cpus to {self.threads}, or lower threads"
            )
        return self

    @property
    def meter_cores(self) -> int:
        """How many cores the meter pins itself to under ``isolation: cores``: ``cpus`` (which
        Ray also reserves for it), at least ``threads``."""
        return max(int(self.cpus), self.threads)

    @field_validator("max_repeats")
    @classmethod
    def _max_repeats(cls, v: int | None, info: ValidationInfo) -> int | None:
        repeats = info.data.get("repeats")  # absent when repeats itself is invalid
        if v is not None and repeats is not None and v < repeats:
            raise ValueError(
                f"max_repeats must be >= repeats ({repeats}) (got {v}); raise it, or leave it "
                "out for 5 x repeats"
            )
        return v

    @field_validator("cpus")
    @classmethod
    def _cpus(cls, v: float, info: ValidationInfo) -> float:
        if v > 0 and info.data.get("where") == "inline":
            raise ValueError(
                f"cpus reserves CPUs for the latency actor, but where is 'inline' (got "
                f"cpus={v:g}); set cpus: 0, or where: actor"
            )
        return v

    @field_validator("resources")
    @classmethod
    def _resources(cls, v: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        for name in v:
            if not name.strip():
                raise ValueError("a resource name must not be empty; e.g. {deploy_cpu: 1}")
            if name in _RAY_BUILTIN_RESOURCES:
                raise ValueError(
                    f"resources takes custom Ray resources (the ones a node is started with, "
                    f"`ray start --resources '{{\"deploy_cpu\": 1}}'`), not {name!r}; "
                    "reserve CPUs with latency.cpus"
                )
        if v and info.data.get("where") == "inline":
            raise ValueError(
                f"resources pin the latency actor to a node, but where is 'inline' (got {v}); "
                "set where: actor, or remove resources"
            )
        return v
