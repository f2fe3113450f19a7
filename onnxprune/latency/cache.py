"""Disk cache of latency tables, keyed by what the times depend on.

A table is valid for one model (hash of the normalised graph), one
execution provider, batch, thread count, CPU model and onnxruntime version;
any of these changing gives a new key, so a stale table is never read.
Within a file, groups are keyed by their layers and candidate widths, so a
run with other ``--exclude`` patterns reuses what it can. Writes are atomic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Optional

import onnx

from .timing import LatencySettings, cpu_model, default_cache_dir

logger = logging.getLogger(__name__)

FORMAT = 1


def table_key(model: onnx.ModelProto, settings: LatencySettings) -> str:
    """Hex key of (model, provider, batch, threads, CPU model, onnxruntime version, format)."""
    from ..runtime import ort
    h = hashlib.sha256(model.SerializeToString(deterministic=True))
    h.update(json.dumps([settings.providers[0], settings.batch, settings.threads, cpu_model(),
                         ort().__version__, FORMAT]).encode())
    return h.hexdigest()[:32]


class TableCache:
    """JSON files ``<key>.json`` in ``folder`` (default ``~/.cache/onnxprune/latency``)."""

    def __init__(self, folder: Optional[str | os.PathLike] = None) -> None:
        self.folder = Path(folder) if folder is not None else default_cache_dir()

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def load(self, key: str) -> dict:
        try:
            return json.loads(self.path(key).read_text())
        except (OSError, ValueError):
            return {}

    def store(self, key: str, data: dict) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
            os.replace(tmp, self.path(key))
        except OSError as exc:  # a read-only home must not stop a pruning run
            logger.warning("latency table not cached (%s)", exc)
