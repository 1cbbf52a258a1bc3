"""Noise-aware dominance: the rule on small tables, and the tags of a real MLflow search checked
against a brute-force recomputation that does not use the reports package."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from reports import (
    ReportError,
    Tolerance,
    hypervolume,
    load_search,
    pareto_ranks,
    parse_tolerances,
    publish_front,
    update_front,
)
from reports._noise import replicate_spread

OBJ = [("accuracy", "maximize"), ("size_gzip_bytes", "minimize"), ("latency_ms", "minimize")]


def _trial(n: int, acc: float, gz: float, lat: float, **extra: float) -> dict[str, float]:
    row = {
        "trial_number": n,
        "status": "FINISHED",
        "accuracy": acc,
        "size_bytes": gz * 2,
        "size_gzip_bytes": gz,
        "latency_ms": lat,
        "val_samples": 360.0,
        "latency_median_cv": 0.02,
        "latency_blocks": 5.0,
    }
    return {**row, **extra}


def test_latency_within_the_measured_spread_ties_and_groups() -> None:
    # The demo's case: same file, latencies 0.0950 vs 0.0953 ms measured with a 2 % block CV.
    df = pd.DataFrame(
        [
            _trial(0, 0.95, 1000, 0.0953),
            _trial(1, 0.95, 1000, 0.0950),
            _trial(2, 0.95, 1000, 0.0951, size_bytes=1500.0),
            _trial(3, 0.90, 900, 0.2000),  # smaller, slower, less accurate: a real trade-off
        ]
    )
    strict = pareto_ranks(df, OBJ, tolerances={"latency_ms": Tolerance("latency_ms", "exact")})
    assert strict["pareto"].tolist() == [False, True, False, True]
    ranked = pareto_ranks(df, OBJ)  # auto
    assert ranked["pareto"].tolist() == [True, True, True, True]
    assert ranked["pareto_strict"].tolist() == [False, True, False, True]
    # One group of three; its representative has the smallest file (trial 2: size_bytes 1500),
    # the others are named.
    assert ranked["pareto_group"].tolist() == [2, 2, 2, 3]
    assert ranked["pareto_representative"].tolist() == [False, False, True, True]
    assert ranked.loc[2, "pareto_tied"] == "0,1"
    assert ranked.loc[3, "pareto_tied"] == ""


def test_a_latency_gap_beyond_the_intervals_still_dominates() -> None:
    # Half-widths 2 x 0.02 x lat / sqrt(5): ~0.0018 ms at 0.1 ms; 0.1 vs 0.11 is beyond.
    df = pd.DataFrame([_trial(0, 0.95, 1000, 0.110), _trial(1, 0.95, 1000, 0.100)])
    assert pareto_ranks(df, OBJ)["pareto_rank"].tolist() == [1, 0]
    # A steadier measurement (more blocks) narrows the interval; an unknown CV widens it to inf.
    wide = df.assign(latency_median_cv=[math.inf, 0.02])
    assert pareto_ranks(wide, OBJ)["pareto"].tolist() == [True, True]


def test_accuracy_ties_within_one_validation_sample() -> None:
    # 1/360 = 0.00278: 0.9000 vs 0.9027 ties; 0.9000 vs 0.9056 (two samples) does not.
    one = pd.DataFrame([_trial(0, 0.9000, 1000, 1.0), _trial(1, 0.9027, 1000, 1.0)])
    assert pareto_ranks(one, OBJ)["pareto"].tolist() == [True, True]
    exactly_one = pd.DataFrame([_trial(0, 324 / 360, 1000, 1.0), _trial(1, 325 / 360, 1000, 1.0)])
    assert pareto_ranks(exactly_one, OBJ)["pareto"].tolist() == [True, True]
    two = pd.DataFrame([_trial(0, 0.9000, 1000, 1.0), _trial(1, 0.9056, 1000, 1.0)])
    assert pareto_ranks(two, OBJ)["pareto"].tolist() == [False, True]
    # Without val_samples (an older record) accuracy is exact.
    old = one.drop(columns=["val_samples"])
    assert pareto_ranks(old, OBJ)["pareto"].tolist() == [False, True]


def test_size_is_exact_and_a_relative_tolerance_is_accepted() -> None:
    df = pd.DataFrame([_trial(0, 0.95, 1000, 1.0), _trial(1, 0.95, 999, 1.0)])
    assert pareto_ranks(df, OBJ)["pareto"].tolist() == [False, True]
    tols = parse_tolerances("size_gzip_bytes:0.01,latency_ms:auto", [m for m, _ in OBJ])
    assert tols["size_gzip_bytes"] == Tolerance("size_gzip_bytes", "relative", 0.01)
    assert tols["accuracy"].kind == "auto"  # not named: the default
    assert pareto_ranks(df, OBJ, tolerances=tols)["pareto"].tolist() == [True, True]
    with pytest.raises(ReportError, match=r"auto, exact or a number in \[0, 1\), got '2'"):
        parse_tolerances("latency_ms:2", ["latency_ms"])


def test_hypervolume_is_of_the_measured_values() -> None:
    df = pd.DataFrame([_trial(0, 0.95, 1000, 0.0953), _trial(1, 0.95, 1000, 0.0950)])
    ref = {"accuracy": 0.0, "size_gzip_bytes": 2000.0, "latency_ms": 0.2}
    # The tied trial adds nothing: the hypervolume is that of the better measured point alone.
    assert hypervolume(df, OBJ, ref) == pytest.approx(hypervolume(df.iloc[[1]], OBJ, ref))


def test_replicates_give_the_latency_floor() -> None:
    """Four trials with the same format and file size run the same computation: the spread of
    their latencies (0.020 to 0.030 ms) is noise the single measurements' CV cannot see."""
    same = {"format": "int8", "size_bytes": 5000.0}
    df = pd.DataFrame(
        [
            _trial(0, 0.95, 1000, 0.020, **same),
            _trial(1, 0.95, 1000, 0.021, **same),
            _trial(2, 0.95, 1000, 0.030, **same),
            _trial(3, 0.95, 1000, 0.022, **same),
            {**_trial(4, 0.97, 3000, 0.100), "format": "fp32", "size_bytes": 9000.0},
        ]
    )
    spread = replicate_spread(df)
    # pairwise |a - b| / max: 1/21, 1/3, 1/11, 3/10, 1/22, 8/30; the 90 % quantile by linear
    # interpolation lies halfway between the two largest: (3/10 + 1/3) / 2
    assert (spread.pairs, spread.groups) == (6, 1)
    assert spread.relative == pytest.approx((3 / 10 + 1 / 3) / 2)
    ranked = pareto_ranks(df, OBJ)
    # Without the floor trial 0 (0.020 ms) dominates 1 and 3 on a difference of 5-10 %, inside
    # the replicates' spread; with it they tie. Trial 2 is 33 % slower: beyond it.
    assert ranked["pareto"].tolist() == [True, True, False, True, True]
    assert ranked["pareto_group"].iloc[0] == ranked["pareto_group"].iloc[1]
    alone = pareto_ranks(df.drop(columns=["format"]), OBJ)  # no replicates known
    assert alone["pareto"].tolist() == [True, False, False, False, True]
    old = pareto_ranks(df.drop(columns=["latency_median_cv"]), OBJ)  # records without the CV
    assert old["pareto"].tolist() == [True, False, False, False, True]


def test_front_ties_use_the_floor_of_every_ranked_trial() -> None:
    """The replicates that set the floor may be off the front: the front's groups still use it
    (a bug grouped the front with a floor from the front trials alone)."""
    same = {"format": "int8", "size_bytes": 5000.0}
    df = pd.DataFrame(
        [
            _trial(0, 0.95, 1000, 0.020, **same),
            _trial(1, 0.95, 1000, 0.025, **same),
            _trial(2, 0.80, 1000, 0.021, **same),
            _trial(3, 0.80, 1000, 0.027, **same),
            _trial(4, 0.80, 1000, 0.022, **same),
        ]
    )
    ranked = pareto_ranks(df, OBJ)
    assert ranked["pareto"].tolist() == [True, True, False, False, False]
    assert ranked["pareto_group"].iloc[0] == ranked["pareto_group"].iloc[1]
    assert ranked["pareto_tied"].iloc[0] == "1"


def test_one_replicate_pair_is_not_enough_for_a_floor() -> None:
    same = {"format": "int8", "size_bytes": 5000.0}
    df = pd.DataFrame([_trial(0, 0.95, 1000, 0.020, **same), _trial(1, 0.95, 1000, 0.030, **same)])
    assert replicate_spread(df).relative == 0.0
    assert pareto_ranks(df, OBJ)["pareto"].tolist() == [True, False]


# --- a real search in MLflow, checked by brute force --------------------------------------------


def _brute_front(rows: list[dict[str, float]]) -> tuple[set[int], set[int]]:
    """(noise-aware front, strict front) as trial numbers, by the rule of docs/noise.md."""

    def tol(a: dict[str, float], b: dict[str, float], metric: str) -> float:
        if metric == "accuracy":
            return 1 / min(a["val_samples"], b["val_samples"])
        if metric == "latency_ms":
            return sum(
                2 * t["latency_median_cv"] * t["latency_ms"] / math.sqrt(t["latency_blocks"])
                for t in (a, b)
            )
        return 0.0

    def gain(a: dict[str, float], b: dict[str, float], metric: str, direction: str) -> float:
        return a[metric] - b[metric] if direction == "maximize" else b[metric] - a[metric]

    def dominates(a: dict[str, float], b: dict[str, float], noisy: bool) -> bool:
        t = {m: (tol(a, b, m) * (1 + 1e-9) + 1e-9 if noisy else 0.0) for m, _ in OBJ}
        gains = [(gain(a, b, m, d), t[m]) for m, d in OBJ]
        return all(g >= -x for g, x in gains) and any(g > x for g, x in gains)

    noisy = {
        int(a["n"]) for a in rows if not any(dominates(b, a, True) for b in rows if b is not a)
    }
    strict = {
        int(a["n"]) for a in rows if not any(dominates(b, a, False) for b in rows if b is not a)
    }
    return noisy, strict


def test_recorded_search_tags_match_a_brute_force_front(tmp_path: Path) -> None:
    rng = random.Random(7)
    uri = f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("noise", artifact_location=(tmp_path / "a").as_uri())
    parent = client.create_run(
        exp,
        tags={
            "slimtune.role": "search",
            "slimtune.objectives": ",".join(f"{m}:{d}" for m, d in OBJ),
            "slimtune.tolerances": "accuracy:auto,size_gzip_bytes:auto,latency_ms:auto",
        },
    ).info.run_id
    client.log_batch(
        parent,
        metrics=[
            Metric(f"baseline_{k}", v, 0, 0)
            for k, v in {"accuracy": 0.97, "size_gzip_bytes": 9000.0, "latency_ms": 0.3}.items()
        ],
        params=[Param("space.bits", "{'choices': [8, 32]}"), Param("space.lr", "0.001")],
    )
    rows = []
    for n in range(30):
        row = {
            "n": float(n),
            # Few distinct sizes and accuracies a sample or two apart, latencies that overlap:
            "accuracy": rng.choice([340, 341, 342, 345, 350]) / 360,
            "size_gzip_bytes": float(rng.choice([2000, 2400, 4000, 8000])),
            "latency_ms": rng.uniform(0.09, 0.12),
            "latency_median_cv": rng.choice([0.01, 0.03, 0.08]),
            "latency_blocks": float(rng.choice([5, 10])),
            "val_samples": 360.0,
        }
        rows.append(row)
        run = client.create_run(
            exp,
            tags={
                "mlflow.parentRunId": parent,
                "slimtune.role": "trial",
                "slimtune.trial_number": str(n),
                "format": "int8" if n % 2 else "fp32",
            },
        ).info.run_id
        client.log_batch(
            run,
            metrics=[Metric(k, v, 0, 0) for k, v in row.items() if k != "n"],
            params=[Param("bits", "8" if n % 2 else "32"), Param("lr", "0.001")],
        )
        client.set_terminated(run, "FINISHED")
    update_front(uri, parent)

    noisy, strict = _brute_front(rows)
    assert noisy != strict  # the data makes the two rules differ
    children = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    tags = {int(r.data.tags["slimtune.trial_number"]): r.data.tags for r in children}
    assert {n for n, t in tags.items() if t["pareto"] == "true"} == noisy
    assert {n for n, t in tags.items() if t["pareto_rank"] == "0"} == noisy
    assert {n for n, t in tags.items() if t["pareto_strict"] == "true"} == strict
    # Every front trial names its group's representative, itself on the front.
    groups = {n: int(t["pareto_group"]) for n, t in tags.items() if "pareto_group" in t}
    assert set(groups) == noisy and set(groups.values()) <= noisy
    # The notebook API agrees with the tags.
    search = load_search(uri, "noise")
    assert set(search.trials.loc[search.trials["pareto"].astype(bool), "trial_number"]) == noisy

    # A trial that beats the whole front by far: the others leave it and lose their group tag.
    best = client.create_run(
        exp,
        tags={
            "mlflow.parentRunId": parent,
            "slimtune.role": "trial",
            "slimtune.trial_number": "30",
        },
    ).info.run_id
    top = {"accuracy": 1.0, "size_gzip_bytes": 100.0, "latency_ms": 0.01, "val_samples": 360.0}
    client.log_batch(best, metrics=[Metric(k, v, 0, 0) for k, v in top.items()])
    client.set_terminated(best, "FINISHED")
    update_front(uri, parent)
    children = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    tags = {int(r.data.tags["slimtune.trial_number"]): r.data.tags for r in children}
    assert {n for n, t in tags.items() if t["pareto"] == "true"} == {30}
    assert {n for n, t in tags.items() if "pareto_group" in t} == {30}
    noisy = {30}

    # The final publish logs the tolerances used on the parent, and says the hypervolume ignores
    # them; the front table shows the knob that varies (bits) and not the fixed one (lr).
    publish_front(uri, parent, out_dir=tmp_path / "out", interactive=False)
    ptags = client.get_run(parent).data.tags
    assert ptags["tolerance.accuracy"].startswith("auto: one validation sample")
    assert "0.002778" in ptags["tolerance.accuracy"]
    assert ptags["tolerance.size_gzip_bytes"].startswith("auto: exact")
    assert "95 % intervals" in ptags["tolerance.latency_ms"]
    assert ptags["hypervolume_values"] == "measured (no tolerance)"
    csv = pd.read_csv(tmp_path / "out" / "pareto.csv")
    assert "bits" in csv.columns and "lr" not in csv.columns
    assert set(csv["trial_number"]) == noisy
