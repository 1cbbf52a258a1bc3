"""The record of one trial: everything needed to rebuild its model exactly, versioned.

A search logs it with each trial (``trial/record.json`` in MLflow); ``slimtune rebuild`` reads it
back, runs the trial again with :func:`trials.run_trial` and compares. It holds the search's
validated config (task, training, latency, ...), the trial's knobs, number and seeds, the torch
thread count (CPU results depend on it, bit for bit), what pruning did, fingerprints of the dense
baseline, of the compressed weights and of the ONNX file, and the versions of the libraries that
shape the artifact. It is plain JSON, a few kilobytes.

Schema versions: ``RECORD_SCHEMA_VERSION`` is what this slimtune writes and the newest it reads.
A change that an older reader would misread raises it.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from searchspace import ConfigError, SearchSpec, SlimtuneError, TrialParams
from trials._cpu import CpuKind, cpu_kind
from trials._fingerprints import VersionDrift, file_sha256, library_versions
from trials._plan import CompressionPlan
from trials._settings import Lineage, PruningLog, TrialResult, TrialSettings

RECORD_SCHEMA_VERSION = 1
RECORD_KIND = "slimtune.trial-record"

# The settings a record carries: every TrialSettings field but the two machine paths.
_PATH_FIELDS = ("cache_dir", "work_dir")


class RecordError(SlimtuneError):
    """A trial record cannot be used. The message names the field, the value, the rule and the
    fix."""

    def __init__(self, *, source: str, field: str, value: object, rule: str, fix: str) -> None:
        self.field = field
        self.value = value
        super().__init__(
            f"trial record of {source}: field '{field}' is invalid: {rule}; got {value!r}. "
            f"Fix: {fix}"
        )


@dataclass(frozen=True)
class TrialRecord:
    """How one trial of a search ran; ``rebuild_settings`` and ``trial_params`` run it again.

    ``settings`` holds every ``TrialSettings`` field but the paths, ``int8_auto`` (an 8-bit
    trial's ``int8_format`` is the format it used) and ``plan_latency`` (a latency-budget plan
    holds its latency table in the lineage; a rebuild allocates from it) (``seed`` is the
    trial's own: the search's seed plus the trial number; ``baseline_seed`` the search's).
    ``torch_threads`` is the intra-op thread count the trial trained with; ``baseline_threads``
    that of the process that trained the dense baseline (the search's driver), used only if a
    rebuild must train the baseline again. ``onnx_sha256`` and ``size_bytes`` fingerprint the
    logged ONNX file. ``cpu`` is the kind of CPU the trial ran on (``None`` in records written
    before slimtune recorded it): a rebuild on another kind may differ bit for bit.
    """

    spec: SearchSpec
    number: int
    params: TrialParams
    settings: dict[str, Any]
    torch_threads: int
    baseline_threads: int
    baseline_cache_dir: str
    lineage: Lineage | None
    onnx_sha256: str
    size_bytes: int
    versions: dict[str, str]
    schema_version: int = RECORD_SCHEMA_VERSION
    cpu: CpuKind | None = None

    @classmethod
    def of(
        cls,
        spec: SearchSpec,
        number: int,
        params: TrialParams,
        settings: TrialSettings,
        result: TrialResult,
        *,
        torch_threads: int,
        baseline_threads: int,
    ) -> TrialRecord:
        """The record of a trial that just ran (``result`` is what ``run_trial`` returned)."""
        kept = _settings_json(settings)
        kept["baseline_seed"] = settings.dense_seed
        # The search's resolution of `auto` is how the format was chosen, not how the model is
        # made: the record keeps the format itself (below), as schema 1 always has.
        kept.pop("int8_auto", None)
        kept.pop("plan_latency", None)  # in the lineage's plan (latency_table)
        if result.lineage is not None and result.lineage.int8_format is not None:
            # `auto` is resolved by timing on the machine: rebuild with what the trial used.
            kept["int8_format"] = result.lineage.int8_format
        return cls(
            spec=spec,
            number=number,
            params=params,
            settings=kept,
            torch_threads=torch_threads,
            baseline_threads=baseline_threads,
            baseline_cache_dir=str(settings.cache_dir),
            lineage=result.lineage,
            onnx_sha256=file_sha256(result.onnx_path),
            size_bytes=result.onnx_path.stat().st_size,
            versions=library_versions(),
            cpu=cpu_kind(),
        )

    @property
    def slimtune_version(self) -> str:
        return self.versions.get("slimtune", "unknown")

    def rebuild_settings(
        self, *, work_dir: Path, cache_dir: Path, device: str | None = None
    ) -> TrialSettings:
        """The trial's settings with this machine's paths (and another ``device`` if given:
        then the weights need not match bit for bit)."""
        values = _settings_values(self.settings)
        plan = self.lineage.plan if self.lineage is not None else None
        if plan is not None and plan.get("latency_table") is not None:
            values["plan_latency"] = plan["latency_table"]  # allocate as the trial did
        if device is not None:
            values["device"] = device
        return TrialSettings(cache_dir=cache_dir, work_dir=work_dir, **values)

    @property
    def device(self) -> str:
        """Where the trial trained (``cpu`` for records of searches before GPU training)."""
        return str(self.settings.get("device") or "cpu")

    def version_drift(self, here: Mapping[str, str] | None = None) -> list[VersionDrift]:
        """The recorded libraries whose version differs in this process (or in ``here``)."""
        now = dict(here) if here is not None else library_versions()
        return [
            VersionDrift(name, recorded, now.get(name, "absent"))
            for name, recorded in sorted(self.versions.items())
            if now.get(name, "absent") != recorded
        ]

    def to_dict(self) -> dict[str, Any]:
        lineage = self.lineage
        return {
            "schema_version": self.schema_version,
            "kind": RECORD_KIND,
            "slimtune_version": self.slimtune_version,
            "versions": dict(self.versions),
            "machine": None if self.cpu is None else dataclasses.asdict(self.cpu),
            "search": self.spec.model_dump(mode="json"),
            "trial": {
                "number": self.number,
                "params": self.params.to_dict(),
                "settings": dict(self.settings),
                "torch_threads": self.torch_threads,
            },
            "baseline": {
                "seed": self.settings.get("baseline_seed"),
                "torch_threads": self.baseline_threads,
                "cache_dir": self.baseline_cache_dir,
                "sha256": lineage.baseline_sha256 if lineage else None,
            },
            "pruning": dataclasses.asdict(lineage.pruning) if lineage else None,
            "outcome": {
                "int8_format": lineage.int8_format if lineage else None,
                "plan": lineage.plan if lineage else None,
                "weights_sha256": lineage.weights_sha256 if lineage else None,
                "onnx_sha256": self.onnx_sha256,
                "size_bytes": self.size_bytes,
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, source: str) -> TrialRecord:
        """Read and validate a record. Raises ``RecordError`` naming the field and the fix."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise RecordError(
                source=source,
                field="<file>",
                value=str(exc),
                rule="the record must be JSON",
                fix="the record was damaged; rebuild from another trial or re-run the search",
            ) from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Any, *, source: str) -> TrialRecord:
        r = _Reader(data, source)
        r.check_version()
        versions = r.mapping("versions")
        spec = r.spec()
        trial = r.mapping("trial")
        baseline = r.mapping("baseline")
        outcome = r.mapping("outcome")
        settings = r.settings(trial)
        lineage = None
        if baseline.get("sha256") is not None:
            lineage = Lineage(
                baseline_seed=r.integer(baseline, "baseline.seed"),
                baseline_sha256=r.text(baseline, "baseline.sha256"),
                weights_sha256=r.text(outcome, "outcome.weights_sha256"),
                pruning=r.pruning(),
                int8_format=r.optional_text(outcome, "outcome.int8_format"),
                plan=r.plan(outcome),
            )
        return cls(
            spec=spec,
            number=r.integer(trial, "trial.number"),
            params=r.params(trial),
            settings=settings,
            torch_threads=r.integer(trial, "trial.torch_threads"),
            baseline_threads=r.integer(baseline, "baseline.torch_threads"),
            baseline_cache_dir=r.text(baseline, "baseline.cache_dir"),
            lineage=lineage,
            onnx_sha256=r.text(outcome, "outcome.onnx_sha256"),
            size_bytes=r.integer(outcome, "outcome.size_bytes"),
            versions={str(k): str(v) for k, v in versions.items()},
            schema_version=RECORD_SCHEMA_VERSION,
            cpu=r.cpu(),
        )


def _settings_json(settings: TrialSettings) -> dict[str, Any]:
    """Every ``TrialSettings`` field but the paths, as JSON values (a dataclass-valued field,
    such as a latency plan, as its fields)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        if f.name in _PATH_FIELDS:
            continue
        value = getattr(settings, f.name)
        is_object = dataclasses.is_dataclass(value) and not isinstance(value, type)
        if is_object:
            value = dataclasses.asdict(value)
        out[f.name] = list(value) if isinstance(value, tuple) else value  # as JSON reads back
    return out


def _settings_values(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of ``_settings_json``: objects become the dataclass the field is typed as."""
    hints = typing.get_type_hints(TrialSettings)
    out: dict[str, Any] = {}
    for name, value in raw.items():
        cls = _dataclass_of(hints.get(name))
        out[name] = cls(**value) if cls is not None and isinstance(value, dict) else value
    return out


def _dataclass_of(hint: Any) -> Any:
    candidates = [hint, *typing.get_args(hint)]
    return next((c for c in candidates if dataclasses.is_dataclass(c)), None)


class _Reader:
    """Field-by-field validation of a record's JSON, every failure a ``RecordError``."""

    def __init__(self, data: Any, source: str) -> None:
        self.source = source
        if not isinstance(data, dict):
            self.fail("<root>", type(data).__name__, "the record must be a JSON object", _REDO)
        self.data: dict[str, Any] = data

    def fail(self, field: str, value: object, rule: str, fix: str) -> NoReturn:
        raise RecordError(source=self.source, field=field, value=value, rule=rule, fix=fix)

    def check_version(self) -> None:
        version = self.data.get("schema_version")
        writer = self.data.get("slimtune_version", "unknown")
        if isinstance(version, bool) or not isinstance(version, int):
            self.fail(
                "schema_version",
                version,
                f"it must be a whole number (1 to {RECORD_SCHEMA_VERSION})",
                _REDO,
            )
        if version > RECORD_SCHEMA_VERSION:
            self.fail(
                "schema_version",
                version,
                f"this slimtune reads trial records up to schema {RECORD_SCHEMA_VERSION}; the "
                f"record was written by slimtune {writer}",
                f"upgrade slimtune to {writer} or later (pip install 'slimtune>={writer}')",
            )
        if version < 1:
            self.fail("schema_version", version, "trial record schemas start at 1", _REDO)
        if self.data.get("kind") != RECORD_KIND:
            self.fail("kind", self.data.get("kind"), f"it must be {RECORD_KIND!r}", _REDO)

    def mapping(self, name: str) -> dict[str, Any]:
        value = self.data.get(name)
        if not isinstance(value, dict):
            self.fail(name, value, "it must be a JSON object", _REDO)
        return value

    def integer(self, where: Mapping[str, Any], field: str) -> int:
        value = where.get(field.rsplit(".", 1)[-1])
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(field, value, "it must be a whole number", _REDO)
        return value

    def text(self, where: Mapping[str, Any], field: str) -> str:
        value = where.get(field.rsplit(".", 1)[-1])
        if not isinstance(value, str) or not value:
            self.fail(field, value, "it must be a non-empty string", _REDO)
        return value

    def optional_text(self, where: Mapping[str, Any], field: str) -> str | None:
        return None if where.get(field.rsplit(".", 1)[-1]) is None else self.text(where, field)

    def cpu(self) -> CpuKind | None:
        """The CPU the trial ran on; ``None`` for records written before it was recorded (an
        older reader ignores the field, so it needs no new schema)."""
        machine = self.data.get("machine")
        if machine is None:
            return None
        if not isinstance(machine, dict):
            self.fail("machine", machine, "it must be a JSON object", _REDO)
        return CpuKind(
            key=self.text(machine, "machine.key"), model=self.text(machine, "machine.model")
        )

    def plan(self, outcome: Mapping[str, Any]) -> dict[str, Any] | None:
        """A mixed trial's plan (absent in records of uniform trials), checked to be one."""
        raw = outcome.get("plan")
        if raw is None:
            return None
        try:
            return CompressionPlan.from_dict(raw).to_dict()
        except ConfigError as exc:
            self.fail("outcome.plan", raw, f"it must be a CompressionPlan ({exc})", _REDO)

    def spec(self) -> SearchSpec:
        try:
            return SearchSpec.model_validate(self.mapping("search"))
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(["search", *(str(p) for p in err["loc"])])
            self.fail(field, err.get("input"), str(err["msg"]), _REDO)

    def params(self, trial: Mapping[str, Any]) -> TrialParams:
        raw = trial.get("params")
        try:
            if not isinstance(raw, dict):
                raise TypeError("it must be a JSON object")
            return TrialParams.from_dict(raw)
        except (KeyError, TypeError, ValueError) as exc:
            self.fail("trial.params", raw, str(exc), _REDO)

    def settings(self, trial: Mapping[str, Any]) -> dict[str, Any]:
        raw = trial.get("settings")
        if not isinstance(raw, dict):
            self.fail("trial.settings", raw, "it must be a JSON object", _REDO)
        known = {f.name for f in dataclasses.fields(TrialSettings)} - set(_PATH_FIELDS)
        unknown = sorted(set(raw) - known)
        if unknown:
            self.fail(
                f"trial.settings.{unknown[0]}",
                raw[unknown[0]],
                f"this slimtune knows the settings {sorted(known)}",
                "upgrade slimtune to the version that wrote the record (slimtune_version)",
            )
        for name in ("epochs", "seed"):
            if name not in raw:
                self.fail(f"trial.settings.{name}", None, "this field is required", _REDO)
        try:  # TrialSettings' own rules (epochs >= 0, repeats >= 5, ...), with stand-in paths
            TrialSettings(cache_dir=Path("/"), work_dir=Path("/"), **_settings_values(raw))
        except ConfigError as exc:
            self.fail(f"trial.settings.{exc.field}", exc.value, exc.rule, _REDO)
        except TypeError as exc:
            self.fail("trial.settings", raw, str(exc), _REDO)
        return dict(raw)

    def pruning(self) -> PruningLog:
        raw = self.mapping("pruning")
        try:
            return PruningLog(
                scheme=str(raw["scheme"]),
                target=float(raw["target"]),
                total_steps=int(raw.get("total_steps", 0)),
                ramp_steps=int(raw.get("ramp_steps", 0)),
                every=int(raw.get("every", 0)),
                history=tuple((int(s), float(p)) for s, p in raw.get("history", ())),
                widths=tuple(int(w) for w in raw.get("widths", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            self.fail("pruning", raw, f"it must hold scheme, target and numbers ({exc})", _REDO)


_REDO = (
    "the record was edited or damaged; use the trial/record.json that the search logged, or "
    "re-run the search to log a new one"
)
