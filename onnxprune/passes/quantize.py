"""Prune, then quantize: onnxruntime's static int8 quantization as a Pass.

Before: a float32 model (typically the pruned and re-fitted one).
After:  the same graph in QDQ form (QuantizeLinear/DequantizeLinear around
        every quantizable op; int8 weights, per output channel by default),
        made by ``onnxruntime.quantization.quantize_static`` from the same
        calibration samples the pruning used (:class:`CalibrationFeeder`),
        after onnxruntime's pre-processing, with the activation type and
        weight range its documentation advises for the CPU (:func:`cpu_quant_types`).
Ensures: the ONNX checker, strict shape inference and an onnxruntime
        session accept it, its outputs have the float model's shapes and are
        finite, and their relative L2 distance to the float model's on a
        calibration batch is at most ``max_rel_l2`` (default 0.5: a bound
        against a broken quantization, not a promise of accuracy; the
        measured figure and the arg-max agreement go in the notes).
        Quantization is inexact by design: there is no exactness check.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass, field
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import onnx

from ..fidelity.distortion import distortion
from ..config import QUANTIZE_MODES
from ..errors import CalibrationError, InvalidArgumentError, VerificationError
from ..runtime import make_session
from .verify import check_structure
from .base import Pass, PassResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantizeResult(PassResult):
    """The quantized model and its fidelity to the float model on a calibration batch (``rel_l2``, ...)."""

    fidelity: dict[str, float] = field(default_factory=dict)

MAX_REL_L2 = 0.5


def _reader_base() -> type:
    try:
        from onnxruntime.quantization import CalibrationDataReader
    except ImportError:  # pragma: no cover - onnxruntime is a dependency of every run
        return object
    return CalibrationDataReader


class CalibrationFeeder(_reader_base()):  # type: ignore[misc]
    """onnxprune's cached calibration data as an onnxruntime CalibrationDataReader.

    Rewindable, and with ``__len__``/``set_range`` so that onnxruntime's
    strided calibration (``CalibStridedMinMax``) can read it a batch at a
    time: its MinMax calibrator otherwise holds every intermediate tensor
    of every sample in memory at once.
    """

    def __init__(self, calibration: Any) -> None:
        self.feeds = calibration.feeds()
        self._next, self._end = 0, len(self.feeds)

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        if self._next >= self._end:
            return None
        self._next += 1
        return self.feeds[self._next - 1]

    def rewind(self) -> None:
        self._next, self._end = 0, len(self.feeds)

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, min(end_index, len(self.feeds))


def cpu_quant_types() -> tuple[str, bool]:
    """(activation type, reduce_range) as onnxruntime's quantize_static advises for CPU inference.

    x86: unsigned 8-bit activations with signed weights (U8S8); without the
    VNNI dot-product instructions, 7-bit weights (reduce_range) to avoid
    saturation. Elsewhere (ARM): signed activations.
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return "QInt8", False
    try:
        vnni = "vnni" in Path("/proc/cpuinfo").read_text()
    except OSError:
        vnni = True
    return "QUInt8", not vnni


def _pre_process(src: Path, dst: Path) -> Path:
    """onnxruntime's recommended pre-processing (shape inference, graph optimisation: BN folded into Conv).

    Best effort: a model it cannot handle is quantized as it is.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process
    quiet = logging.getLogger()  # the quantization tool logs on the root logger
    level = quiet.level
    quiet.setLevel(max(level, logging.ERROR))
    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)  # symbolic inference needs sympy
        return dst
    except Exception as exc:  # noqa: BLE001 - pre-processing is an optimisation; quantization proceeds without
        logger.info("quantization pre-processing skipped: %s", str(exc).splitlines()[0] if str(exc) else exc)
        return src
    finally:
        quiet.setLevel(level)


def _distortion(model: onnx.ModelProto, reference: onnx.ModelProto, feeds: Sequence[dict]) -> dict[str, float]:
    """Raw distortion of ``model``'s first output against ``reference``'s (relative L2, arg-max agreement):
    the pass's own post-condition (did quantization break the model?), not the fidelity in the user's terms,
    which the run's judge measures on held-back rows. VerificationError when it does not run or gives
    non-finite values."""
    ref = make_session(reference)
    want = [ref.run(None, f)[0] for f in feeds]
    try:
        sess = make_session(model)
        got = [sess.run(None, f)[0] for f in feeds]
    except Exception as exc:  # noqa: BLE001 - any failure of onnxruntime is a failed check
        raise VerificationError(f"onnxruntime cannot run the quantized model: {str(exc).splitlines()[0]}") from None
    for g, w in zip(got, want):
        if g.shape != w.shape:
            raise VerificationError(f"output shape {g.shape}, the float model gives {w.shape}")
        if np.issubdtype(g.dtype, np.floating) and not np.isfinite(g).all():
            raise VerificationError("the quantized model's output is not finite")
    return distortion(want, got)


class QuantizePass(Pass):
    """Static int8 quantization (QDQ) by onnxruntime, calibrated on onnxprune's calibration data."""

    name = "quantize"

    def __init__(self, calibration: Any, mode: str = "int8", *, per_channel: bool = True,
                 nodes_to_exclude: Sequence[str] = (), max_rel_l2: float = MAX_REL_L2,
                 activation_type: Optional[str] = None, reduce_range: Optional[bool] = None) -> None:
        if mode not in QUANTIZE_MODES:
            raise InvalidArgumentError(f"unknown quantization {mode!r}; choose {', '.join(QUANTIZE_MODES)}")
        self.calibration = calibration
        self.mode = mode
        self.per_channel = per_channel
        self.nodes_to_exclude = list(nodes_to_exclude)
        self.max_rel_l2 = max_rel_l2
        default_type, default_reduce = cpu_quant_types()
        self.activation_type = activation_type or default_type
        self.reduce_range = default_reduce if reduce_range is None else reduce_range
        if self.activation_type not in ("QInt8", "QUInt8"):
            raise InvalidArgumentError(f"activation type must be QInt8 or QUInt8, got {self.activation_type!r}")

    def requires(self, model: onnx.ModelProto) -> None:
        if self.calibration is None or len(self.calibration) == 0:
            raise self.fail_pre("static int8 quantization needs calibration data: pass --calib DIR|FILE "
                                "or a calibration_data_reader")
        try:
            import onnxruntime.quantization  # noqa: F401
        except ImportError:  # pragma: no cover
            raise self.fail_pre("onnxruntime.quantization is not installed") from None

    def call(self, model: onnx.ModelProto) -> QuantizeResult:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
        with tempfile.TemporaryDirectory(prefix="onnxprune-quant-") as tmp:
            src, out = Path(tmp) / "float.onnx", Path(tmp) / "quantized.onnx"
            onnx.save_model(model, str(src))
            src = _pre_process(src, Path(tmp) / "prepared.onnx")
            try:
                # one batch at a time, ranges merged (not CalibMaxIntermediateOutputs: onnxruntime 1.32 drops
                # rather than merges what it collected when that limit is reached)
                quantize_static(src, out, CalibrationFeeder(self.calibration), quant_format=QuantFormat.QDQ,
                                per_channel=self.per_channel, reduce_range=self.reduce_range,
                                activation_type=getattr(QuantType, self.activation_type),
                                weight_type=QuantType.QInt8, nodes_to_exclude=self.nodes_to_exclude or None,
                                extra_options={"CalibStridedMinMax": 1})
            except (ValueError, RuntimeError, onnx.checker.ValidationError) as exc:
                raise self.fail_post(f"onnxruntime could not quantize the model: {str(exc).splitlines()[0]}") \
                    from None
            quantized = onnx.load(str(out))  # external data, if any, is read in here
        return QuantizeResult(quantized, True)

    def ensures(self, before: onnx.ModelProto, result: QuantizeResult) -> QuantizeResult:
        try:
            check_structure(result.model)
            feeds = self.calibration.feeds(last=1)
            fid = _distortion(result.model, before, feeds)
        except VerificationError as exc:
            raise self.fail_post(str(exc)) from None
        except CalibrationError as exc:  # pragma: no cover - the data was read before
            raise self.fail_post(str(exc)) from None
        if not fid["rel_l2"] <= self.max_rel_l2:
            raise self.fail_post(f"int8 outputs are {fid['rel_l2']:.3g} (relative L2) from the float model's, "
                                 f"more than the bound {self.max_rel_l2}: quantization failed, nothing written")
        note = f"int8 (QDQ{', per-channel weights' if self.per_channel else ''}, {self.activation_type} " \
               f"activations{', 7-bit weights' if self.reduce_range else ''}): relative L2 to float " \
               f"{fid['rel_l2']:.4f}" + (f", arg-max agreement {fid['argmax_agreement']:.1%}"
                                          if "argmax_agreement" in fid else "") + " on a calibration batch"
        return result.noted(note, fidelity=fid)
