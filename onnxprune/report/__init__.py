"""One home for every report: a prune/apply run's and a sweep's, as terminal text, Markdown, JSON and one HTML page.

``model`` holds the figures (:class:`Report`, :class:`PruneResult`),
``prune`` and ``sweep`` build each report's content once as a
:class:`~onnxprune.report.document.Document`, ``document`` renders it,
``plots`` draws the figures (PNG, inline in the HTML page) and
``provenance`` says where the figures come from.
"""

from .document import columns as _fmt
from .groups import GroupImportance, group_of_layer
from .model import LayerChange, ModelStats, PathLike, PruneResult, Report, build_report, count_params, method_line
from .provenance import Provenance

__all__ = ["GroupImportance", "LayerChange", "ModelStats", "PathLike", "PruneResult", "Report", "build_report", "count_params",
           "group_of_layer", "method_line", "Provenance", "_fmt"]
