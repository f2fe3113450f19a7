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
from dataclasses import dataclass, replace
from typing import Any, Optional, Sequence

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

    ``notes`` are one-line human summaries, the first one the pass's headline (:attr:`summary`). A pass
    with structured results returns a subclass with typed fields (``SurgeryResult.verification``,
    ``NormalizeResult.input_shapes``, ``QuantizeResult.fidelity``, ...), not a dict of names.
    """

    model: onnx.ModelProto
    modified: bool
    notes: tuple[str, ...] = ()

    @property
    def summary(self) -> Optional[str]:
        """The pass's one-line headline for the report (its first note), None when it has none."""
        return self.notes[0] if self.notes else None

    def noted(self, *notes: str, **fields: Any) -> "PassResult":
        """This result (of the same type) with ``notes`` appended and ``fields`` replaced: what ``ensures`` returns."""
        return replace(self, notes=self.notes + notes, **fields)


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
        """Raise PostconditionError unless ``result`` keeps the promise; may add notes and typed fields (``result.noted``)."""
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

    def then(self, passes: Sequence["Pass"]) -> "PipelineResult":
        """The same run continued by ``passes`` on its model (the pruning run quantizes after judging the
        float model): one result, every pass in order, the first failure stopping it as before."""
        more = Pipeline(passes)(self.model)
        return PipelineResult(more.model, self.results + more.results)


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
