"""Loading, validating and atomically writing ONNX models.

Loading refuses, with a clear reason, what the rest of onnxprune cannot
handle; saving goes through a temporary file in the target folder and an
atomic rename, so a failed or interrupted write never leaves a half file and
never touches the user's input.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Union

import onnx
from google.protobuf.message import DecodeError

from ..errors import InvalidArgumentError, InvalidModelError, UnsupportedModelError

logger = logging.getLogger(__name__)

ModelLike = Union[str, os.PathLike, onnx.ModelProto]

MIN_OPSET = 11
_QUANT_OPS = {
    "QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
    "MatMulInteger", "DynamicQuantizeLinear", "QLinearAdd", "QLinearMul",
}


def load_model(model: ModelLike, *, check: bool = True) -> onnx.ModelProto:
    """Return a ModelProto from a path or a proto, refusing out-of-scope models.

    A proto given by the caller is copied, so nothing onnxprune does can
    change the caller's object.
    """
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
        try:
            proto = onnx.load(str(path), load_external_data=True)
        except DecodeError as exc:
            raise InvalidModelError(f"{path}: not an ONNX model or truncated protobuf ({exc})") from None
        except (OSError, ValueError, RuntimeError) as exc:
            raise InvalidModelError(f"{path}: cannot be read as ONNX ({exc})") from None
    if not proto.graph.node:
        raise InvalidModelError(f"{source}: not an ONNX model (the graph has no nodes)")
    check_supported(proto, source)
    if check:
        try:
            onnx.checker.check_model(proto)
        except (onnx.checker.ValidationError, ValueError) as exc:
            # Models over 2 GB cannot be checked in memory; everything else must pass.
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InvalidModelError(f"{source}: fails the ONNX checker: {first}") from None
    return proto


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
    if not os.access(parent, os.W_OK):
        raise InvalidArgumentError(f"output folder {parent} is not writable")
    return out


def save_model_atomic(proto: onnx.ModelProto, output: Union[str, os.PathLike], *,
                      use_external_data_format: bool | None = None) -> Path:
    """Write the model through a temporary file and rename it into place.

    Models over ~1.8 GB are written with external data automatically (protobuf
    cannot serialise more than 2 GB); the data file sits next to the model.
    """
    out = Path(output)
    parent = out.resolve().parent
    if use_external_data_format is None:
        use_external_data_format = proto.ByteSize() > 1_800_000_000
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=str(parent))
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if use_external_data_format:
            data_name = out.name + ".data"
            onnx.save_model(proto, str(tmp), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
        else:
            onnx.save_model(proto, str(tmp))
        os.replace(tmp, out)
    except OSError as exc:
        raise InvalidArgumentError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    logger.info("wrote %s (%d bytes)", out, out.stat().st_size)
    return out
