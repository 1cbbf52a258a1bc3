"""The MLflow UI as a user sees it: `slimtune ui` on the session's finished search, in Chromium.

A real `mlflow server` (started by `slimtune ui`) serves the store of the search in
tests/orchestrator/conftest.py; headless Chromium (Debian's package, driven by playwright's python
package: no browser download) opens the experiment the way a user does and checks what the pages
show against MLflow's records and an independent recomputation of the Pareto ranks. Screenshots
of every page land in $SLIMTUNE_TEST_ARTIFACTS/mlflow-ui/ (default: test-artifacts/mlflow-ui/ in
the repository root, git-ignored), for a person to look at after CI.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import noise_ranks_by_peeling
from tests.orchestrator.conftest import E2E_EXPERIMENT, E2E_TRIALS, E2ESearch

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists() and os.geteuid() != 0:
    pytest.skip(
        f"{CHROMIUM} is missing and this is not root, so scripts/setup.sh could not install it. "
        "Fix: sudo apt-get install chromium",
        allow_module_level=True,
    )

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

# The closed network here makes Chromium's background services fail; a fresh profile per launch
# is playwright's own default.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The e2e config's objectives, as signs that turn each into a cost (maximize -> negate).
OBJECTIVE_SIGNS = {"accuracy": -1.0, "size_gzip_bytes": 1.0, "latency_ms": 1.0}
PLOTS = ("accuracy_vs_size.png", "accuracy_vs_latency.png", "hypervolume.png")
TIMEOUT_MS = 60_000  # the UI's bundles are large and the CPU is shared
expect.set_options(timeout=TIMEOUT_MS)


def _artifact_dir() -> Path:
    root = Path(__file__).resolve().parents[2]
    base = Path(os.environ.get("SLIMTUNE_TEST_ARTIFACTS") or root / "test-artifacts")
    out = base / "mlflow-ui"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _shot(page: Page, name: str) -> None:
    page.screenshot(path=str(_artifact_dir() / f"{name}.png"), full_page=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ui_url(e2e_search: E2ESearch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`slimtune ui` in the search's directory on a free loopback port, stopped afterwards."""
    work, _ = e2e_search
    port = _free_port()
    log = tmp_path_factory.mktemp("ui") / "server.log"  # a file: an unread pipe would fill up
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "ui", "--port", str(port)],
            cwd=work,
            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.read().strip() == b"OK":
                        break
            except OSError:
                pass
            exited = proc.poll() is not None
            assert not exited, f"slimtune ui exited ({proc.returncode}): {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "slimtune ui did not answer /health in 120 s"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing. Fix: run `bash scripts/setup.sh` as root (installs it)"
        )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh browser profile per test; a screenshot of where a failing test stopped."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    failed_before = request.session.testsfailed
    yield pg
    if request.session.testsfailed > failed_before:
        _shot(pg, f"failed-{request.node.name}")
    context.close()


def _records(e2e_search: E2ESearch) -> tuple[Any, list[Any]]:
    """The search's parent run and its child runs, read straight from the store."""
    work, _ = e2e_search
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name(E2E_EXPERIMENT)
    assert exp is not None
    (parent,) = client.search_runs([exp.experiment_id], "tags.`slimtune.role` = 'search'")
    children = client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == E2E_TRIALS
    return parent, children


def _ranks_by_peeling(children: list[Any]) -> dict[str, int]:
    """Pareto rank of each run by brute-force noise-aware dominance (docs/noise.md), peeling one
    front at a time (tests/conftest.py)."""
    objectives = tuple((m, -float(s)) for m, s in OBJECTIVE_SIGNS.items())
    return noise_ranks_by_peeling(
        {c.info.run_id: c.data.metrics for c in children},
        objectives,
        formats={c.info.run_id: c.data.tags["format"] for c in children},
    )


def _open_runs(page: Page, url: str, parent: Any) -> None:
    """The experiment's runs, in the "Model training" view, as a user gets there from home."""
    exp_id = parent.info.experiment_id
    page.goto(url)  # the home page lists the experiments
    link = page.get_by_role("link", name=E2E_EXPERIMENT, exact=True)
    expect(link).to_have_attribute("href", re.compile(rf"#/experiments/{exp_id}\b"))
    # MLflow 3.17 opens an experiment in its GenAI view, under a first-visit tour popover; its runs
    # are one click on the "Model training" toggle away, which the UI then remembers.
    page.goto(f"{url}/#/experiments/{exp_id}/runs")
    page.get_by_role("button", name="Model training", exact=True).click()
    expect(page.get_by_text(f"{E2E_TRIALS + 1} matching runs")).to_be_visible()
    # The assistant panel, open by default, takes a third of the width: close it, as a user would.
    page.get_by_role("button", name="Close", exact=True).click()


def _open_parent(page: Page, url: str, parent: Any) -> None:
    """The search's parent run, from the runs table, on its Overview tab."""
    _open_runs(page, url, parent)
    page.get_by_role("link", name=parent.info.run_name, exact=True).click()
    expect(page.get_by_role("heading", name=parent.info.run_name)).to_be_visible()


def test_runs_table_shows_every_trial_with_pareto_tags_that_a_recomputation_confirms(
    page: Page, ui_url: str, e2e_search: E2ESearch
) -> None:
    parent, children = _records(e2e_search)
    _open_runs(page, ui_url, parent)
    parent_row = page.get_by_role("row").filter(
        has=page.get_by_role("link", name=parent.info.run_name, exact=True)
    )
    parent_row.get_by_role("button").click()  # expand the search's child runs
    page.get_by_role("button", name="Columns", exact=True).click()
    page.get_by_placeholder("Search columns").fill("pareto")
    chooser = page.get_by_role("dialog")
    for tag in ("pareto", "pareto_rank"):
        chooser.get_by_title(tag, exact=True).click()
    page.keyboard.press("Escape")
    cells = page.locator('[role=gridcell][col-id="tags.`pareto_rank`"]')
    expect(cells).to_have_count(E2E_TRIALS + 1)
    _shot(page, "1-runs-with-pareto-tags")

    shown = page.evaluate(
        """() => {
            const rows = {};
            for (const cell of document.querySelectorAll('[role=gridcell][col-id]')) {
                const id = cell.closest('[role=row]')?.getAttribute('row-id');
                if (id) (rows[id] ||= {})[cell.getAttribute('col-id')] = cell.innerText.trim();
            }
            return rows;
        }"""
    )
    rank = _ranks_by_peeling(children)
    assert set(shown) == {parent.info.run_id, *rank}, shown
    for c in children:
        row = shown[c.info.run_id]
        assert c.info.run_name in row["attributes.`Run Name`"], row
        expected = ("true" if rank[c.info.run_id] == 0 else "false", str(rank[c.info.run_id]))
        assert (row["tags.`pareto`"], row["tags.`pareto_rank`"]) == expected, (c.info.run_name, row)
    assert 0 < sum(r == 0 for r in rank.values()) <= E2E_TRIALS


def test_parent_run_charts_the_hypervolume_one_point_per_finished_trial(
    page: Page, ui_url: str, e2e_search: E2ESearch
) -> None:
    parent, _ = _records(e2e_search)
    work, _ = e2e_search
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    history = sorted(
        client.get_metric_history(parent.info.run_id, "hypervolume"), key=lambda m: m.step
    )
    _open_parent(page, ui_url, parent)
    page.get_by_role("tab", name="Model metrics", exact=True).click()
    page.get_by_placeholder("Search metric charts").fill("hypervolume")
    chart = page.locator(".js-plotly-plot")
    expect(chart).to_have_count(1)
    expect(page.get_by_text("hypervolume", exact=True).first).to_be_visible()
    page.wait_for_function(
        "() => (document.querySelector('.js-plotly-plot')?.data ?? []).length > 0"
    )
    _shot(page, "3-parent-hypervolume-chart")
    traces = chart.evaluate("el => el.data.map(t => ({x: Array.from(t.x), y: Array.from(t.y)}))")
    assert traces, "the hypervolume chart plots nothing"
    for t in traces:  # the line and, where drawn, its markers: the logged history, step by step
        assert t["x"] == [m.step for m in history] == list(range(1, E2E_TRIALS + 1))
        assert t["y"] == pytest.approx([m.value for m in history], rel=1e-9)


def test_parent_run_shows_the_plots_and_the_interactive_trials_page(
    page: Page, ui_url: str, e2e_search: E2ESearch
) -> None:
    parent, children = _records(e2e_search)
    _open_parent(page, ui_url, parent)
    for c in children:  # the Overview links every trial's run
        expect(page.get_by_role("link", name=c.info.run_name, exact=True)).to_be_visible()
    _shot(page, "2-parent-overview")
    page.get_by_role("tab", name="Artifacts", exact=True).click()
    for name in (*PLOTS, "pareto.csv", "trials.html"):
        expect(page.get_by_text(name, exact=True)).to_be_visible()
    for name in PLOTS:
        page.get_by_text(name, exact=True).click()
        img = page.locator(f'img[alt="{name}"]')
        expect(img).to_be_visible()
        page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=img.element_handle())
        size = img.evaluate("el => [el.naturalWidth, el.naturalHeight]")
        assert size[0] >= 300 and size[1] >= 200, (name, size)
        _shot(page, f"4-artifact-{name.removesuffix('.png')}")

    page.get_by_text("trials.html", exact=True).click()
    plot = page.frame_locator("iframe").locator(".js-plotly-plot")
    expect(plot).to_be_visible()
    expect(plot.locator(".scatterlayer .point").first).to_be_visible()
    _shot(page, "5-artifact-trials-html")
    hover = plot.evaluate("el => el.data.map(t => [].concat(t.text ?? []).join(' ')).join(' ')")
    for c in children:  # every trial is a point whose hover names its run
        assert f"run {c.info.run_id}" in hover, c.info.run_name
