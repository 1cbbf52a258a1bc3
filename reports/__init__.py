"""What the results of a search mean: Pareto front, trade-off plots, selection under constraints.

Reads and writes MLflow only through ``MlflowClient`` with explicit run ids.
"""

from reports._errors import ReportError, SearchNotFound
from reports._mlflow import SearchRuns, download_model, load_search, publish_front
from reports._pareto import pareto_front, pareto_mask, parse_objectives
from reports._plots import plot_tradeoffs
from reports._select import BYTES_PER_KB, Constraints, NoFeasibleTrial, Selection, select

__all__ = [
    "BYTES_PER_KB",
    "Constraints",
    "NoFeasibleTrial",
    "ReportError",
    "SearchNotFound",
    "SearchRuns",
    "Selection",
    "download_model",
    "load_search",
    "pareto_front",
    "pareto_mask",
    "parse_objectives",
    "plot_tradeoffs",
    "publish_front",
    "select",
]
