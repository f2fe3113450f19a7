"""Latency of the target runtime: measured tables per group, interleaved timing, a disk cache."""

from .cache import TableCache, table_key
from .timing import LatencySettings, Speed, Timing, time_against_dense, time_interleaved, time_models
from .table import GroupLatency, LatencyTable, build_table, candidate_widths

__all__ = ["LatencySettings", "Speed", "Timing", "time_against_dense", "time_interleaved", "time_models", "TableCache",
           "table_key", "GroupLatency", "LatencyTable", "build_table", "candidate_widths"]
