"""The Pass contract every model rewrite follows, and the pipeline that composes them.

After onnx_ir's passes: a pass checks what it needs (``requires``), rewrites
(``call(model) -> PassResult(model, modified)``) and proves what it promises
(``ensures``). A failed check raises an error that names the pass, so a user
reads *which* step refused and why. A :class:`Pipeline` runs passes in order
and stops at the first failure: nothing after it runs, nothing is written.

Exact passes (channel surgery, sparse storage) make verification their
``ensures``; inexact ones (recovery, quantization) measure their fidelity
there and say so in their notes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import onnx

from ..errors import InvalidArgumentError, OnnxPruneError, VerificationError

logger = logging.getLogger(__name__)


class PassError(OnnxPruneError):
    """A pass refused its input or failed its own guarantee; nothing was written."""

    def __init__(self, pass_name: str, why: str) -> None:
        super().__init__(f"{pass_name}: {why}")
        self.pass_name = pass_name
        self.why = why


class PreconditionError(PassError, InvalidArgumentError):
    """The model (or plan) given to a pass lacks what the pass requires."""


class PostconditionError(PassError, VerificationError):
    """The model a pass produced does not keep the pass's promise."""


@dataclass(frozen=True)
class PassResult:
    """The model after a pass, whether it changed, and what the report should say about it.

    ``details`` carries structured results a caller may want (a VerificationResult,
    per-layer statistics); ``notes`` are one-line human summaries.
    """

    model: onnx.ModelProto
    modified: bool
    notes: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)


class Pass:
    """Base class: override ``call``; ``requires``/``ensures`` default to no check.

    Subclasses raise ``self.fail_pre(why)`` / ``self.fail_post(why)`` so the
    error names the pass.
    """

    name: str = "pass"

    def requires(self, model: onnx.ModelProto) -> None:  # noqa: B027 - optional hook
        """Raise PreconditionError when ``model`` is not something this pass can take."""

    def call(self, model: onnx.ModelProto) -> PassResult:
        raise NotImplementedError

    def ensures(self, before: onnx.ModelProto, result: PassResult) -> PassResult:
        """Raise PostconditionError unless ``result`` keeps the promise; may add notes/details."""
        return result

    def fail_pre(self, why: str) -> PreconditionError:
        return PreconditionError(self.name, why)

    def fail_post(self, why: str) -> PostconditionError:
        return PostconditionError(self.name, why)

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        self.requires(model)
        result = self.call(model)
        if not isinstance(result, PassResult):
            raise TypeError(f"pass {self.name} returned {type(result).__name__}, not a PassResult")
        return self.ensures(model, result)


@dataclass(frozen=True)
class PipelineResult:
    """The final model and every pass's result, in order."""

    model: onnx.ModelProto
    results: tuple[tuple[str, PassResult], ...]

    @property
    def modified(self) -> bool:
        return any(r.modified for _, r in self.results)

    @property
    def notes(self) -> tuple[str, ...]:
        return tuple(f"{name}: {n}" for name, r in self.results for n in r.notes)

    def result_of(self, name: str) -> PassResult | None:
        for n, r in self.results:
            if n == name:
                return r
        return None


class Pipeline:
    """Passes run in order; the first failure stops the run (and so any write after it)."""

    def __init__(self, passes: Sequence[Pass]) -> None:
        self.passes = list(passes)

    def __call__(self, model: onnx.ModelProto) -> PipelineResult:
        results: list[tuple[str, PassResult]] = []
        for p in self.passes:
            logger.info("pass %s", p.name)
            result = p(model)
            results.append((p.name, result))
            model = result.model
        return PipelineResult(model, tuple(results))
