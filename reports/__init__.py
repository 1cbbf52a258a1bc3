"""What the results of a search mean: Pareto front, trade-off plots, selection under constraints.

Reads and writes MLflow only through ``MlflowClient`` with explicit run ids.
"""

from reports._decision import (
    decision_record,
    download_model_version,
    register_selection,
    with_remeasured_latency,
)
from reports._errors import ReportError, SearchNotFound
from reports._interactive import interactive_figure, plot_interactive
from reports._mlflow import (
    FrontTracker,
    FrontUpdate,
    SearchRuns,
    download_model,
    hypervolume_history,
    load_search,
    publish_front,
    update_front,
)
from reports._pareto import (
    REFERENCE_FACTOR,
    front,
    hypervolume,
    pareto_front,
    pareto_mask,
    pareto_ranks,
    parse_objectives,
    reference_point,
)
from reports._plots import plot_hypervolume, plot_tradeoffs
from reports._report import (
    Band,
    SearchCost,
    build_report,
    constraint_bands,
    search_cost,
    write_report,
)
from reports._select import (
    BYTES_PER_KB,
    OPTIMIZABLE,
    Constraints,
    NoFeasibleTrial,
    Selection,
    select,
)

__all__ = [
    "BYTES_PER_KB",
    "OPTIMIZABLE",
    "REFERENCE_FACTOR",
    "Band",
    "Constraints",
    "FrontTracker",
    "FrontUpdate",
    "NoFeasibleTrial",
    "ReportError",
    "SearchCost",
    "SearchNotFound",
    "SearchRuns",
    "Selection",
    "build_report",
    "constraint_bands",
    "decision_record",
    "download_model",
    "download_model_version",
    "front",
    "hypervolume",
    "hypervolume_history",
    "interactive_figure",
    "load_search",
    "pareto_front",
    "pareto_mask",
    "pareto_ranks",
    "parse_objectives",
    "plot_hypervolume",
    "plot_interactive",
    "plot_tradeoffs",
    "publish_front",
    "reference_point",
    "register_selection",
    "search_cost",
    "select",
    "update_front",
    "with_remeasured_latency",
    "write_report",
]
