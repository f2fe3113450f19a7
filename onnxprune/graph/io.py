"""Loading, validating and atomically writing ONNX models.

Loading refuses, with a clear reason, what the rest of onnxprune cannot
handle; saving goes through a temporary file in the target folder and an
atomic rename, so a failed or interrupted write never leaves a half file and
never touches the user's input.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

import onnx
from google.protobuf.message import DecodeError

from ..errors import InvalidArgumentError, InvalidModelError, UnsupportedModelError
from .external import check_skeleton, needs_external, skeleton, write_with_external_data
from .tensors import check_input_dims, check_tensors, iter_tensors

logger = logging.getLogger(__name__)

ModelLike = Union[str, os.PathLike, onnx.ModelProto]

MIN_OPSET = 11
_QUANT_OPS = {
    "QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
    "MatMulInteger", "DynamicQuantizeLinear", "QLinearAdd", "QLinearMul",
}


def load_model(model: ModelLike, *, check: bool = True) -> onnx.ModelProto:
    """Return a ModelProto from a path or a proto, refusing out-of-scope and hostile models.

    A file is read without its external data first; every tensor's location,
    size and dims are checked (:mod:`.tensors`) before any data is read. A
    proto given by the caller is copied, so nothing onnxprune does can change
    the caller's object.
    """
    base = None
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        source = "<ModelProto>"
    else:
        path = Path(model)
        source = str(path)
        if not path.exists():
            raise InvalidModelError(f"{path}: no such file")
        if path.is_dir():
            raise InvalidModelError(f"{path}: is a folder, expected an .onnx file")
        base = path.parent
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except DecodeError as exc:
            raise InvalidModelError(f"{path}: not an ONNX model or truncated protobuf ({exc})") from None
        except (OSError, ValueError, RuntimeError) as exc:
            raise InvalidModelError(f"{path}: cannot be read as ONNX ({exc})") from None
    if not proto.graph.node:
        raise InvalidModelError(f"{source}: not an ONNX model (the graph has no nodes)")
    check_supported(proto, source)
    has_external = check_tensors(proto, base, source)
    check_input_dims(proto, source)
    if check:
        _run_checker(str(path) if has_external else proto, source)
    if has_external:
        try:
            onnx.load_external_data_for_model(proto, str(base))
        except Exception as exc:  # noqa: BLE001 - onnx raises its own ValidationError, OSError, ...
            raise InvalidModelError(f"{source}: cannot read its external data ({_first_line(exc)})") from None
    return proto


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _run_checker(model: Union[str, onnx.ModelProto], source: str) -> None:
    """The ONNX checker, on the file when its data is external (it then reads no weights)."""
    try:
        if isinstance(model, onnx.ModelProto) and needs_external(model):
            check_skeleton(skeleton(model, with_arrays=False)[0])
        else:
            onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - onnx's ValidationError has no stable base class
        raise InvalidModelError(f"{source}: fails the ONNX checker: {_first_line(exc)}") from None


def opset_version(proto: onnx.ModelProto) -> int:
    """The default-domain opset the model was exported with."""
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def check_supported(proto: onnx.ModelProto, source: str = "model") -> None:
    """Raise UnsupportedModelError for quantized, bfloat16 or too-old models.

    float16 models (and float32 models with float16 bodies between Casts) are
    pruned as they are. bfloat16 is refused: numpy has no bfloat16, and
    onnxruntime's CPU provider runs no bfloat16 Conv (the ONNX spec allows
    bfloat16 Conv only from opset 22), so nothing could be verified.
    """
    version = opset_version(proto)
    if version < MIN_OPSET:
        raise UnsupportedModelError(
            f"{source}: opset {version} is not supported (need >= {MIN_OPSET}); "
            "convert it with onnx.version_converter.convert_version(model, 13)"
        )
    quant = sorted({n.op_type for n in proto.graph.node if n.op_type in _QUANT_OPS})
    if quant:
        raise UnsupportedModelError(
            f"{source}: quantized models are not supported (found {', '.join(quant)}); "
            "prune the float model, then quantize"
        )
    bf16 = onnx.TensorProto.BFLOAT16
    half = [t.name for t in proto.graph.initializer if t.data_type == bf16]
    half += [v.name for v in list(proto.graph.input) + list(proto.graph.value_info) + list(proto.graph.output)
             if v.type.tensor_type.elem_type == bf16]
    half += [n.name or n.op_type for n in proto.graph.node
             if n.op_type == "Cast" and any(a.name == "to" and a.i == bf16 for a in n.attribute)]
    if half:
        raise UnsupportedModelError(
            f"{source}: bfloat16 models are not supported (e.g. {half[0]!r}): onnxruntime's CPU provider has no "
            "bfloat16 kernels to verify the pruned model with; prune the float32 or float16 model, then convert"
        )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output_path(output: Union[str, os.PathLike], *inputs: Union[str, os.PathLike, None]) -> Path:
    """Validate an output path before any work is done: not an input, folder writable."""
    out = Path(output)
    for inp in inputs:
        if inp is None:
            continue
        inp_path = Path(inp)
        if out.resolve() == inp_path.resolve() or _same_file(out, inp_path):
            raise InvalidArgumentError(f"output path {out} is the input file; choose another name")
    parent = out.resolve().parent
    if out.is_dir():
        raise InvalidArgumentError(f"output path {out} is a folder; give a file name")
    if not parent.exists():
        raise InvalidArgumentError(f"output folder {parent} does not exist")
    if not parent.is_dir():
        raise InvalidArgumentError(f"output path {out}: {parent} is not a folder")
    if not os.access(parent, os.W_OK):
        raise InvalidArgumentError(f"output folder {parent} is not writable")
    return out


@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` (same file system: renames out of it are atomic), always removed."""
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=str(out.resolve().parent)))
    except OSError as exc:
        raise InvalidArgumentError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        yield stage
    except OSError as exc:
        raise InvalidArgumentError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def save_model_atomic(proto: onnx.ModelProto, output: Union[str, os.PathLike], *,
                      use_external_data_format: bool | None = None) -> Path:
    """Write the model into a staging folder beside ``output``, then rename it into place.

    With external data (forced, or automatic for models protobuf cannot hold
    in one piece) the weights go to ``<output>.data`` beside the model; the
    data file is renamed first, the model last, so no model is ever visible
    whose data is incomplete. The written model is checked from disk before
    the renames. ``proto`` itself is not changed.
    """
    out = Path(output)
    if use_external_data_format is None:
        use_external_data_format = needs_external(proto)
    with _staging(out) as stage:
        staged = stage / out.name
        if use_external_data_format:
            data_name = out.name + ".data"
            write_with_external_data(proto, staged, data_name)
            _run_checker(str(staged), str(out))
            os.replace(stage / data_name, out.parent / data_name)
        else:
            onnx.save_model(proto, str(staged))
        os.replace(staged, out)
    logger.info("wrote %s (%d bytes)", out, out.stat().st_size)
    return out


def has_external_data(model: ModelLike) -> bool:
    """Whether a model file keeps (some of) its weights in external data: its output then does too."""
    if isinstance(model, onnx.ModelProto):
        return False
    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception:  # noqa: BLE001 - loading has already refused bad files with its own message
        return False
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in iter_tensors(proto.graph))


def write_text_atomic(output: Union[str, os.PathLike], text: str) -> Path:
    """A text file (plan, scores, report) through the same staging and rename."""
    out = Path(output)
    with _staging(out) as stage:
        (stage / out.name).write_text(text)
        os.replace(stage / out.name, out)
    return out
