"""Flags on trials that every surface shows: unconverged latency, failures with their error."""

from __future__ import annotations

import html
from collections.abc import Mapping

import pandas as pd

from reports._knobs import knob_value


def flagged(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``latency_flag``: "not converged (CV 0.31)" where the trial's latency did
    not converge even after its re-measurements, else empty."""
    return df.assign(latency_flag=[latency_flag(row) for _, row in df.iterrows()])


def latency_flag(row: Mapping[str, object] | pd.Series) -> str:
    """ "not converged (block-median CV 0.31)" for a trial tagged ``latency_converged=false``,
    else ""."""
    if str(row.get("latency_converged", "")).lower() != "false":
        return ""
    cv = pd.to_numeric(pd.Series([row.get("latency_median_cv")]), errors="coerce").iloc[0]
    return f"not converged (block-median CV {cv:.2g})" if pd.notna(cv) else "not converged"


def failures_html(df: pd.DataFrame, knobs: list[str]) -> str:
    if df.empty:
        return "<p class='muted'>none</p>"
    rows = []
    for _, row in df.iterrows():
        number = row.get("trial_number")
        label = "" if number is None or pd.isna(number) else str(int(number))
        values = " ".join(f"{k}={knob_value(k, row.get(k))}" for k in knobs)
        error = row.get("error")
        text = str(error) if error is not None and not pd.isna(error) else "(no error recorded)"
        rows.append(
            f"<tr><td>{html.escape(label)}</td><td class='l'>{html.escape(str(row['status']))}"
            f"</td><td class='l'>{html.escape(values)}</td>"
            f"<td class='l'>{html.escape(text)}</td></tr>"
        )
    head = (
        "<tr><th>trial</th><th class='l'>status</th><th class='l'>knobs</th>"
        "<th class='l'>error</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"
