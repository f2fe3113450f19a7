"""Latency of the target runtime: measured tables per group, interleaved timing, a disk cache."""

from .cache import TableCache, table_key
from .measure import LatencySettings, Timing, time_interleaved
from .table import GroupLatency, LatencyTable, build_table, candidate_widths

__all__ = ["LatencySettings", "Timing", "time_interleaved", "TableCache", "table_key", "GroupLatency",
           "LatencyTable", "build_table", "candidate_widths"]
