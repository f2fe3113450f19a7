"""Where scoring work runs: ``local`` threads (the default) or a ``ray`` cluster, behind one contract (base.py)."""

from __future__ import annotations

from typing import Optional, Sequence

from ..errors import InvalidArgumentError
from .base import Executor, Task, merge_sums
from .local import LocalExecutor

EXECUTORS = ("local", "ray")

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "Task", "check_executor", "make_executor", "merge_sums"]


def check_executor(name: str) -> None:
    """Fail early, in one line, for an unknown executor or a ``ray`` without Ray installed."""
    if name not in EXECUTORS:
        raise InvalidArgumentError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
    if name == "ray":
        import importlib.util
        if importlib.util.find_spec("ray") is None:
            from .ray import import_ray
            import_ray()  # raises the one-line install hint


def make_executor(name: str = "local", address: Optional[str] = None, workers: Optional[int] = None,
                  providers: Optional[Sequence[str]] = None) -> Executor:
    """The executor called ``name``; Ray is imported only for ``ray``."""
    check_executor(name)
    if name == "ray":
        from .ray import RayExecutor
        return RayExecutor(address, workers)
    return LocalExecutor(workers, providers)
