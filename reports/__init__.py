"""What the results of a search mean: Pareto front, trade-off plots, selection under constraints.

Reads and writes MLflow only through ``MlflowClient`` with explicit run ids.
"""

from reports._constraints import BYTES_PER_KB, Constraints
from reports._cost import SearchCost, search_cost
from reports._decision import (
    decision_record,
    download_model_version,
    register_selection,
    with_remeasured_latency,
)
from reports._errors import ReportError, SearchNotFound
from reports._flags import latency_flag
from reports._front_store import (
    FrontTracker,
    FrontUpdate,
    hypervolume_history,
    publish_front,
    update_front,
)
from reports._interactive import interactive_figure, plot_interactive
from reports._knobs import knob_value, knobs_text, varying_knobs
from reports._mlflow import SearchRuns, download_model, load_search
from reports._noise import (
    TOLERANCES_TAG,
    Tolerance,
    dominance,
    parse_tolerances,
    tolerance_summary,
)
from reports._pareto import (
    REFERENCE_FACTOR,
    front,
    front_size,
    hypervolume,
    pareto_front,
    pareto_mask,
    pareto_ranks,
    parse_objectives,
    reference_point,
)
from reports._plots import plot_hypervolume, plot_tradeoffs
from reports._report import Band, build_report, constraint_bands, write_report
from reports._select import OPTIMIZABLE, NoFeasibleTrial, Selection, select

__all__ = [
    "BYTES_PER_KB",
    "OPTIMIZABLE",
    "REFERENCE_FACTOR",
    "TOLERANCES_TAG",
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
    "Tolerance",
    "build_report",
    "constraint_bands",
    "decision_record",
    "dominance",
    "download_model",
    "download_model_version",
    "front",
    "front_size",
    "hypervolume",
    "hypervolume_history",
    "interactive_figure",
    "knob_value",
    "knobs_text",
    "latency_flag",
    "load_search",
    "pareto_front",
    "pareto_mask",
    "pareto_ranks",
    "parse_objectives",
    "parse_tolerances",
    "plot_hypervolume",
    "plot_interactive",
    "plot_tradeoffs",
    "publish_front",
    "reference_point",
    "register_selection",
    "search_cost",
    "select",
    "tolerance_summary",
    "update_front",
    "varying_knobs",
    "with_remeasured_latency",
    "write_report",
]
