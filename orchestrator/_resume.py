"""``--resume`` runs a search with the config it started with; a changed config is refused.

Ray Tune restores a search's searcher (``space``, ``trials``, ``sampler``, ``objectives``), its
``concurrency`` and its fault handling (``faults``) from the state it saved when the search
started, so an edited value of those would silently not apply. The fields the trials read
(``task``, ``seed``, ``training``, ``latency``, ``quantization``, ``resources``) would apply to
the trials still to run only, which makes them incomparable with the finished ones. So every
field must match, except the two that say where the search's records are rather than what it
does: ``tracking`` (the MLflow store, e.g. a tracking server that moved) and ``storage`` (Ray
Tune's saved state); the resumed run uses the new values to find them. ``--trials`` and
``--concurrency`` count as part of the config (the search run logged the values it ran with).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, TextIO

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from orchestrator._tracking import CONFIG_ARTIFACT_TAG, find_experiment, resumable_search_run
from searchspace import ConfigError, SearchSpec, SlimtuneError, load_spec

# Fields that may differ on --resume (see the module's docstring).
WHERE_FIELDS = frozenset({"tracking", "storage"})
# Fields the command line may override; the search run logs their values as params.
COUNT_FIELDS = ("trials", "concurrency")
_CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


class ResumeConfigChanged(SlimtuneError):
    """``--resume`` was given a config other than the one the search started with."""


class StartConfigMissing(SlimtuneError):
    """The config a search started with cannot be read back from its search run."""


def check_resume_config(client: MlflowClient, spec: SearchSpec, *, out: TextIO) -> None:
    """Refuse (:class:`ResumeConfigChanged`) to resume the experiment's unfinished search with
    a ``spec`` that differs from the config the search started with; read-only.

    A search whose config cannot be read back (recorded by an old slimtune, say) is resumed
    after a warning on ``out``. An experiment with nothing to resume is left to the search,
    which says so.
    """
    experiment_id = find_experiment(client, spec.experiment)
    if experiment_id is None:
        return
    run = client.get_run(resumable_search_run(client, experiment_id, spec.experiment))
    try:
        started, name = started_spec(client, run)
    except StartConfigMissing as exc:
        print(
            f"slimtune: warning: cannot check that --resume runs with the config search run "
            f"{run.info.run_id} started with ({exc}); resuming with this one",
            file=out,
            flush=True,
        )
        return
    changes = config_changes(started, spec)
    if changes:
        raise ResumeConfigChanged(_message(run.info.run_id, name, changes))


def started_spec(client: MlflowClient, run: Run) -> tuple[SearchSpec, str]:
    """The validated config search ``run`` started with, and its artifact's name.

    The config file is the artifact the run's ``CONFIG_ARTIFACT_TAG`` names or, for a run
    recorded before that tag, its one ``.yaml``/``.yml``/``.json`` file at the root. The
    ``--trials``/``--concurrency`` it ran with come from its params. Raises
    :class:`StartConfigMissing` when there is no such file or it does not validate (any more).
    """
    run_id = run.info.run_id
    root = [a.path for a in client.list_artifacts(run_id) if not a.is_dir]
    tagged = run.data.tags.get(CONFIG_ARTIFACT_TAG)
    if tagged and tagged not in root:
        raise StartConfigMissing(f"its config artifact {tagged!r} is missing")
    found = [tagged] if tagged else [p for p in root if p.endswith(_CONFIG_SUFFIXES)]
    if len(found) != 1:
        raise StartConfigMissing(
            f"it names no config artifact, and its artifacts hold {len(found)} config files "
            f"{found} instead of one"
        )
    name = found[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(client.download_artifacts(run_id, name, tmp))
        try:
            spec = load_spec(path)
        except ConfigError as exc:
            raise StartConfigMissing(
                f"its config {name!r} does not validate with this slimtune: field "
                f"{exc.field!r}: {exc.rule}"
            ) from exc
    counts = {k: int(v) for k, v in run.data.params.items() if k in COUNT_FIELDS and v.isdigit()}
    return spec.model_copy(update=counts), name


def config_changes(started: SearchSpec, now: SearchSpec) -> dict[str, tuple[Any, Any]]:
    """The fields whose validated values differ, as dotted name -> (started with, now); the
    ``WHERE_FIELDS`` are left out. A knob that changed its kind (a range, a list of choices, a
    fixed value) differs as a whole; one choice and that value fixed are the same knob (a
    default ``{choices: [qat]}`` matches ``qat`` written out)."""
    return dict(_differences(_dump(started), _dump(now), ""))


def _dump(spec: SearchSpec) -> dict[str, Any]:
    dump = spec.model_dump(mode="json", exclude=set(WHERE_FIELDS))
    dump["space"] = {k: _one_choice_as_fixed(v) for k, v in dump["space"].items()}
    return dump


def _one_choice_as_fixed(knob: Any) -> Any:
    if isinstance(knob, dict) and list(knob) == ["choices"] and len(knob["choices"]) == 1:
        return knob["choices"][0]
    return knob


def _differences(a: Any, b: Any, path: str) -> list[tuple[str, tuple[Any, Any]]]:
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return [d for k in a for d in _differences(a[k], b[k], f"{path}.{k}" if path else str(k))]
    return [] if a == b else [(path, (a, b))]


def _message(run_id: str, name: str, changes: dict[str, tuple[Any, Any]]) -> str:
    lines = "\n".join(
        f"  {field}: started with {old!r}, now {new!r}" for field, (old, new) in changes.items()
    )
    return (
        f"--resume: the config differs from the one search run {run_id} started with "
        f"(its artifact {name!r}):\n{lines}\n"
        "A resumed search runs with the config it started with: Ray Tune restores its space, "
        "trial count, sampler, objectives, concurrency and fault handling from the saved "
        "state, and the trials still to run must be comparable with the finished ones "
        f"(only {' and '.join(sorted(WHERE_FIELDS))} may differ: they say where the records "
        "are). Fix: put the original config back (with the same --trials/--concurrency, if "
        "the search was started with them), or start a new search without --resume."
    )
