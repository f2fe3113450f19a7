"""Per-operator channel rules, looked up from a plain registry.

One class per operator family (:mod:`.producers`, :mod:`.channelwise`,
:mod:`.rearranging`, :mod:`.reshape`, :mod:`.attention`, :mod:`.fused_attention`); each sees only the narrow contexts of :mod:`.context`.
An op that is not in the registry gets :data:`DEFAULT_RULE`, which freezes
every unit reaching it: unknown means untouched.
"""

from __future__ import annotations

from .attention import GatherRule, LayerNormRule
from .base import FollowRule, OpRule
from .channelwise import ClipRule, ElementwiseRule, NormRule, PassRule, ResizeRule, SoftmaxRule, SpatialRule
from .context import AnalysisContext, RewriteContext, ShapeContext
from .fused_attention import FusedAttentionRule
from .producers import ConvRule, ConvTransposeRule, GemmRule, MatMulRule
from .rearranging import (ConcatRule, FlattenRule, PadRule, ReduceRule, ShapeRule, SliceRule, SplitRule,
                          SqueezeRule, TransposeRule)
from .reshape import ReshapeRule

__all__ = [
    "RULES", "DEFAULT_RULE", "rule_for", "OpRule", "FollowRule", "AnalysisContext", "RewriteContext", "ShapeContext",
    "ConvRule", "ConvTransposeRule", "GemmRule", "MatMulRule", "PassRule", "SpatialRule", "NormRule",
    "ElementwiseRule", "ClipRule", "SoftmaxRule", "ResizeRule", "ConcatRule", "SplitRule", "SliceRule",
    "PadRule", "TransposeRule", "FlattenRule", "ReshapeRule", "SqueezeRule", "ReduceRule", "ShapeRule",
    "GatherRule", "FusedAttentionRule", "LayerNormRule",
]

_UNARY = (
    "Relu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Celu", "Softplus",
    "Softsign", "ThresholdedRelu", "Mish", "Gelu", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal",
    "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Identity", "Dropout", "Cast", "Not", "IsNaN", "Clip",
)
_SPATIAL = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool",
            "DepthToSpace_never")
_ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu", "Sum", "Mean")

RULES: dict[str, OpRule] = {
    "Conv": ConvRule(),
    "ConvTranspose": ConvTransposeRule(),
    "Gemm": GemmRule(),
    "MatMul": MatMulRule(),
    "BatchNormalization": NormRule(),
    "InstanceNormalization": NormRule(),
    "Concat": ConcatRule(),
    "Split": SplitRule(),
    "Slice": SliceRule(),
    "Pad": PadRule(),
    "Transpose": TransposeRule(),
    "Flatten": FlattenRule(),
    "Reshape": ReshapeRule(),
    "Squeeze": SqueezeRule(),
    "Unsqueeze": SqueezeRule(),
    "ReduceMean": ReduceRule(), "ReduceSum": ReduceRule(), "ReduceMax": ReduceRule(), "ReduceMin": ReduceRule(),
    "Softmax": SoftmaxRule(), "LogSoftmax": SoftmaxRule(),
    "Resize": ResizeRule(), "Upsample": ResizeRule(),
    "Shape": ShapeRule(),
    "Gather": GatherRule(),
    "Attention": FusedAttentionRule(),  # ai.onnx (opset 23) heads; com.microsoft (QKV weight inside) frozen
    "MultiHeadAttention": FusedAttentionRule(),
}
for _op in ("LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
            "SkipSimplifiedLayerNormalization", "RMSNormalization"):
    RULES[_op] = LayerNormRule()
for _op in _UNARY:
    RULES[_op] = PassRule()
for _op in _SPATIAL:
    RULES[_op] = SpatialRule()
for _op in _ELEMENTWISE:
    RULES[_op] = ElementwiseRule()

DEFAULT_RULE = OpRule()


def rule_for(op: str) -> OpRule:
    """The rule of ``op``, or the freezing default."""
    return RULES.get(op, DEFAULT_RULE)
