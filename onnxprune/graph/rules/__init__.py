"""Per-operator channel rules, looked up from a plain registry.

One class per operator family (:mod:`.producers`, :mod:`.channelwise`,
:mod:`.rearranging`); each sees only the narrow contexts of :mod:`.context`.
An op that is not in the registry gets :data:`DEFAULT_RULE`, which freezes
every unit reaching it: unknown means untouched.
"""

from __future__ import annotations

from .base import FollowRule, OpRule
from .channelwise import ClipRule, ElementwiseRule, NormRule, PassRule, ResizeRule, SoftmaxRule, SpatialRule
from .context import AnalysisContext, RewriteContext, ShapeContext
from .producers import ConvRule, ConvTransposeRule, GemmRule, MatMulRule
from .rearranging import (ConcatRule, FlattenRule, PadRule, ReduceRule, ReshapeRule, ShapeRule, SliceRule,
                          SplitRule, SqueezeRule, TransposeRule)

__all__ = [
    "RULES", "DEFAULT_RULE", "rule_for", "OpRule", "FollowRule", "AnalysisContext", "RewriteContext", "ShapeContext",
    "ConvRule", "ConvTransposeRule", "GemmRule", "MatMulRule", "PassRule", "SpatialRule", "NormRule",
    "ElementwiseRule", "ClipRule", "SoftmaxRule", "ResizeRule", "ConcatRule", "SplitRule", "SliceRule",
    "PadRule", "TransposeRule", "FlattenRule", "ReshapeRule", "SqueezeRule", "ReduceRule", "ShapeRule",
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
}
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
