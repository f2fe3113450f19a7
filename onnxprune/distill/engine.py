"""The autodiff engine of distillation: the pruned ONNX graph as a PyTorch module, and the way back, by name.

PyTorch with onnx2torch (an established converter that builds a
``torch.fx`` module op by op) rather than onnxruntime's training artifacts:
``onnxruntime-training`` is a separate build of the ``onnxruntime`` module and
cannot live in one environment with the plain onnxruntime (1.32) the rest of
the project runs on.

The ONNX graph stays the source of truth. Each trainable torch parameter is
bound to the ONNX initializer it came from — Conv/ConvTranspose weight and
bias, Gemm (as Linear) weight and bias, BatchNormalization scale and bias,
and the float constants of Add/Sub/Mul/MatMul/PRelu — and a binding is made
only when the tensor equals that initializer bit for bit (transposed for a
Gemm without transB). Everything else, and any initializer read by more than
one node, stays frozen in place: unknown means frozen, never guessed.
:func:`write_back` puts the trained values into a copy of the pruned graph's
own initializers by name; no node, name or shape changes.
"""

from __future__ import annotations

import logging
import sys
import types
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import InvalidArgumentError

logger = logging.getLogger(__name__)

EXTRA_HINT = 'pip install "onnxprune[distill]"'
ELEMENTWISE = ("Add", "Sub", "Mul", "MatMul", "PRelu")
OUTPUT_TOLERANCE = 1e-3  # converted outputs vs onnxruntime's, relative to the output's largest magnitude


class EngineMissingError(InvalidArgumentError):
    """PyTorch or onnx2torch is not installed."""


class Unconvertible(Exception):
    """The converter cannot take this model; distillation is skipped and least squares kept (a notice)."""


def _import_onnx2torch():
    """onnx2torch, tolerating a torchvision built for another torch (it is needed only for NMS and RoiAlign).

    The registry's torchvision wheels are CUDA builds; beside the CPU torch
    wheel their compiled ops fail to load, and onnx2torch imports torchvision
    at import time. Such a torchvision is replaced by a stub whose ops raise.
    """
    # onnx2torch's Slice indexes with a list (a deprecation warning on every new shape): not the user's concern
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing",
                            category=UserWarning)
    try:
        import onnx2torch
        return onnx2torch
    except ImportError:
        raise
    except (RuntimeError, OSError) as exc:
        logger.info("torchvision does not load beside this torch (%s); NMS/RoiAlign cannot be converted",
                    str(exc).splitlines()[0])
    for name in [k for k in sys.modules if k.split(".")[0] in ("torchvision", "onnx2torch")]:
        del sys.modules[name]

    def unusable(*_a, **_k):
        raise RuntimeError("torchvision is not usable beside this torch")

    stub, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
    ops.nms = ops.roi_align = ops.box_convert = unusable
    stub.ops = ops
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = stub, ops
    try:
        import onnx2torch
    finally:  # the stub serves onnx2torch's import only: the process is not left with a fake torchvision
        for name in ("torchvision", "torchvision.ops"):
            if sys.modules.get(name) in (stub, ops):
                del sys.modules[name]
    return onnx2torch


def require_engine() -> None:
    """Raise one clear line unless PyTorch and onnx2torch import."""
    for name in ("torch", "onnx2torch"):
        try:
            _import_onnx2torch() if name == "onnx2torch" else __import__(name)
        except ImportError:
            raise EngineMissingError(f"--recover distill needs PyTorch and onnx2torch ({name} is not installed): "
                                     f"{EXTRA_HINT}") from None


def device() -> str:
    """CUDA when torch sees a GPU, else CPU."""
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Binding:
    """One trainable torch parameter and the ONNX initializer it is written back to."""

    name: str
    param: Any  # torch.nn.Parameter
    transpose: bool = False

    def value(self) -> np.ndarray:
        a = self.param.detach().cpu().numpy()
        return np.ascontiguousarray(a.T if self.transpose else a)


@dataclass
class Student:
    """The pruned model as a torch module, its bindings by initializer name, and what stays frozen and why."""

    module: Any  # torch.fx.GraphModule
    bindings: dict[str, Binding]
    frozen: dict[str, str]
    input_names: list[str]
    output_names: list[str]
    targets: dict[str, str] = field(default_factory=dict)  # ONNX tensor -> the fx module whose only output it is

    def parameters(self) -> list:
        return [b.param for b in self.bindings.values()]

    def forward(self, inputs: Sequence) -> list:
        out = self.module(*inputs)
        outs = [out] if not isinstance(out, (tuple, list)) else list(out)
        if len(outs) != len(self.output_names):
            raise Unconvertible(f"the converted module gives {len(outs)} outputs for the model's "
                                f"{len(self.output_names)}")
        return outs

    def state(self) -> dict[str, np.ndarray]:
        """The bound values by initializer name, in ONNX layout (a copy)."""
        return {n: b.value().copy() for n, b in self.bindings.items()}

    def load(self, state: dict[str, np.ndarray]) -> None:
        import torch
        with torch.no_grad():
            for n, b in self.bindings.items():
                a = state[n].T if b.transpose else state[n]
                b.param.copy_(torch.from_numpy(np.ascontiguousarray(a)))


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """'OpType (node name)' of every node onnx2torch has no converter for."""
    from onnx2torch.node_converters.registry import get_converter
    opset = {o.domain or "": o.version for o in model.opset_import}
    bad = []
    for node in model.graph.node:
        domain = node.domain or ""
        try:
            get_converter(operation_type=node.op_type, version=opset.get(domain, 1), domain=domain)
        except NotImplementedError:
            bad.append(f"{node.op_type} ({node.name or 'unnamed'})")
    return bad


def _module_params(op: str, node: onnx.NodeProto, core) -> list[tuple[Any, str, int, bool, str]]:
    """(owner, attribute, ONNX input index, transposed, why not) of the parameters a converted node holds."""
    from torch import nn
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if op in ("Conv", "ConvTranspose") and isinstance(core, nn.modules.conv._ConvNd):
        return [(core, "weight", 1, False, ""), (core, "bias", 2, False, "")]
    if op == "Gemm" and isinstance(core, nn.Linear):
        why = "" if attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 else "Gemm alpha/beta != 1"
        return [(core, "weight", 1, not attrs.get("transB", 0), why), (core, "bias", 2, False, why)]
    if op == "BatchNormalization" and isinstance(getattr(core, "weight", None), nn.Parameter):
        return [(core, "weight", 1, False, ""), (core, "bias", 2, False, "")]
    return []


def _same_bits(tensor, transpose: bool, init: onnx.TensorProto) -> bool:
    a = tensor.detach().cpu().numpy()
    a = a.T if transpose else a
    b = numpy_helper.to_array(init)
    return a.dtype == np.float32 and a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def with_ranks(model: onnx.ModelProto, input_shapes: Optional[dict[str, tuple[int, ...]]] = None) -> onnx.ModelProto:
    """A copy whose every intermediate tensor has a declared rank: the converter reads ranks from value_info
    (BatchNormalization's spatial rank, ...), and shape inference leaves them out behind computed Reshapes
    (paddle2onnx's SVTR neck). The ranks come from one onnxruntime run at ``input_shapes`` (the calibration
    rows'), else the declared sizes; the dims are left symbolic, so no size is fixed that was not."""
    from ..graph.probe import probe, resolve_input_shapes
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(copy)
    except Exception:  # noqa: BLE001 - the converter will say what it cannot take
        return copy
    known = {vi.name for vi in list(inferred.graph.value_info) + list(inferred.graph.input)
             + list(inferred.graph.output) if vi.type.tensor_type.HasField("shape")}
    missing = [o for n in inferred.graph.node for o in n.output if o and o not in known]
    if not missing:
        return inferred
    try:
        found = probe(inferred, input_shapes or resolve_input_shapes(inferred, warn=False))
    except Exception:  # noqa: BLE001 - no run, no ranks: the converter says what it cannot take
        return inferred
    declared = {vi.name: vi for vi in inferred.graph.value_info}
    for name in missing:
        if name not in found.shapes:
            continue
        dims = [f"{name}_{i}" for i in range(len(found.shapes[name]))]
        if name in declared:
            declared[name].type.tensor_type.shape.dim.extend(onnx.TensorShapeProto.Dimension(dim_param=d) for d in dims)
        elif found.dtypes.get(name):
            inferred.graph.value_info.append(onnx.helper.make_tensor_value_info(name, found.dtypes[name], dims))
    return inferred


def convert(model: onnx.ModelProto, dev: str = "cpu",
            input_shapes: Optional[dict[str, tuple[int, ...]]] = None) -> Student:
    """The pruned model as a trainable torch module; raises :class:`Unconvertible` naming what the converter
    cannot take."""
    import torch
    from torch import nn
    onnx2torch = _import_onnx2torch()
    bad = unsupported_ops(model)
    if bad:
        raise Unconvertible(f"the converter (onnx2torch) cannot take {bad[0]}"
                            + (f" and {len(bad) - 1} more node(s)" if len(bad) > 1 else ""))
    copy = with_ranks(model, input_shapes)
    try:
        gm = onnx2torch.convert(copy, attach_onnx_mapping=True)
    except Exception as exc:  # noqa: BLE001 - any converter failure is a notice, not a crash
        raise Unconvertible(f"the converter (onnx2torch) failed: {str(exc).splitlines()[0] if str(exc) else exc!r}")
    for p in gm.parameters():
        p.requires_grad_(False)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    uses: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    outputs = {o.name for o in g.output}
    bindings: dict[str, Binding] = {}
    why_not: dict[str, str] = {}
    targets: dict[str, str] = {}

    def usable(name: str) -> str:
        if name not in inits:
            return "not an initializer"
        if inits[name].data_type != onnx.TensorProto.FLOAT:
            return "not float32"
        if uses.get(name, 0) != 1 or name in outputs:
            return "read by more than one node"
        return ""

    for fx_node in gm.graph.nodes:
        if fx_node.op != "call_module":
            continue
        mod = gm.get_submodule(fx_node.target)
        mapping = getattr(mod, "onnx_mapping", None)
        if mapping is None or not mapping.outputs or mapping.outputs[0] not in producer:
            continue
        node = producer[mapping.outputs[0]]
        if len(mapping.outputs) == 1:
            targets[mapping.outputs[0]] = fx_node.target
        core = mod[-1] if isinstance(mod, nn.Sequential) and len(mod) else mod
        for owner, attr, idx, transpose, why in _module_params(node.op_type, node, core):
            param = getattr(owner, attr, None)
            if idx >= len(node.input) or not node.input[idx] or param is None:
                continue
            name = node.input[idx]
            why = why or usable(name) or ("" if _same_bits(param, transpose, inits[name]) else
                                         "converted values differ from the initializer")
            if why:
                why_not[name] = f"{node.op_type} {node.name}: {why}"
                continue
            param.requires_grad_(True)
            bindings[name] = Binding(name, param, transpose)
        if node.op_type not in ELEMENTWISE:
            continue
        for pos, arg in enumerate(fx_node.args):
            if getattr(arg, "op", None) != "get_attr" or pos >= len(mapping.inputs):
                continue
            name = mapping.inputs[pos]
            owner_path, _, buf = arg.target.rpartition(".")
            owner = gm.get_submodule(owner_path)
            tensor = getattr(owner, buf)
            why = usable(name) or ("scalar" if tensor.numel() <= 1 else "") or \
                ("" if _same_bits(tensor, False, inits[name]) else "converted values differ from the initializer")
            if why:
                why_not[name] = f"{node.op_type} {node.name}: {why}"
                continue
            delattr(owner, buf)
            param = nn.Parameter(tensor.detach().clone())
            owner.register_parameter(buf, param)
            bindings[name] = Binding(name, param, False)
    frozen = {n: why_not.get(n, "held as a constant by the converter") for n, t in inits.items()
              if n not in bindings and t.data_type == onnx.TensorProto.FLOAT and int(np.prod(t.dims)) > 1}
    if not bindings:
        raise Unconvertible("the converted model has no weight that maps back to an initializer by name")
    gm.eval().to(dev)
    in_names = [i.name for i in g.input if i.name not in inits]
    return Student(gm, bindings, frozen, in_names, [o.name for o in g.output], targets)


def check_outputs(student: Student, model: onnx.ModelProto, feed: dict[str, np.ndarray], dev: str) -> None:
    """Raise :class:`Unconvertible` unless the module computes what onnxruntime computes on ``feed``."""
    import torch

    from ..runtime import make_session
    ref = make_session(model).run(None, feed)
    with torch.no_grad():
        got = student.forward([torch.from_numpy(np.asarray(feed[n])).to(dev) for n in student.input_names])
    for name, r, y in zip(student.output_names, ref, got):
        r = np.asarray(r, dtype=np.float64)
        y = y.detach().cpu().numpy().astype(np.float64)
        if r.shape != y.shape:
            raise Unconvertible(f"the converted module's output {name!r} has shape {y.shape}, not {r.shape}")
        err = float(np.abs(r - y).max()) if r.size else 0.0
        if err > OUTPUT_TOLERANCE * max(1.0, float(np.abs(r).max()) if r.size else 1.0):
            raise Unconvertible(f"the converted module's output {name!r} differs from onnxruntime's by {err:.3g}")


def write_back(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose named initializers hold ``values`` (same names, shapes and dtype)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name in values:
            a = np.asarray(values[t.name], dtype=np.float32)
            if tuple(a.shape) != tuple(t.dims):
                raise ValueError(f"initializer {t.name!r}: trained shape {a.shape} != {tuple(t.dims)}")
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    return out


def input_arrays(calibration: Any) -> dict[str, np.ndarray]:
    """Every fit row of ``calibration`` per input name."""
    feeds = calibration.feeds()
    return {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}


def frozen_summary(student: Student, limit: int = 3) -> Optional[str]:
    """'12 float initializers frozen (e.g. ...)', or None."""
    if not student.frozen:
        return None
    some = "; ".join(f"{n}: {w}" for n, w in list(student.frozen.items())[:limit])
    return f"{len(student.frozen)} float initializer(s) stay frozen ({some})"
