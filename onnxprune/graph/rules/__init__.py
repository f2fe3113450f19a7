"""Per-operator channel rules, looked up from a plain registry.

One class per operator family (:mod:`.producers`, :mod:`.channelwise`,
:mod:`.rearranging`, :mod:`.reshape`, :mod:`.attention`, :mod:`.fused_attention`); each sees only the narrow contexts of :mod:`.context`.
An op that is not in the registry gets :data:`DEFAULT_RULE`, which freezes
every unit reaching it: unknown means untouched. Ops of another domain than
ONNX's own (a custom op, ``com.microsoft``'s) are looked up by (domain, op)
only, never as the ONNX op of the same name: :func:`register_channel_rule`
(``onnxprune.register_channel_rule``) adds their rules.
"""

from __future__ import annotations

import logging

from ...errors import InvalidArgumentError
from .attention import GatherRule, LayerNormRule
from .base import FollowRule, OpRule
from .channelwise import ElementwiseRule, NormRule, PassRule, ResizeRule, SoftmaxRule, SpatialRule
from .context import AnalysisContext, RewriteContext, ShapeContext
from .fused_attention import FusedAttentionRule
from .producers import ConvRule, ConvTransposeRule, GemmRule, MatMulRule
from .rearranging import (ConcatRule, FlattenRule, PadRule, ReduceRule, ShapeRule, SliceRule, SplitRule,
                          SqueezeRule, TransposeRule)
from .reshape import ReshapeRule

__all__ = [
    "RULES", "CUSTOM_RULES", "DEFAULT_RULE", "rule_for", "register_channel_rule",
    "OpRule", "FollowRule", "AnalysisContext", "RewriteContext", "ShapeContext",
    "ConvRule", "ConvTransposeRule", "GemmRule", "MatMulRule", "PassRule", "SpatialRule", "NormRule",
    "ElementwiseRule", "SoftmaxRule", "ResizeRule", "ConcatRule", "SplitRule", "SliceRule",
    "PadRule", "TransposeRule", "FlattenRule", "ReshapeRule", "SqueezeRule", "ReduceRule", "ShapeRule",
    "GatherRule", "FusedAttentionRule", "LayerNormRule",
]

_UNARY = (
    "Relu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Celu", "Softplus",
    "Softsign", "ThresholdedRelu", "Mish", "Gelu", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal",
    "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Identity", "Dropout", "Cast", "Not", "IsNaN", "Clip",
)
_SPATIAL = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool")
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
ONNX_DOMAINS = ("", "ai.onnx")
CUSTOM_RULES: dict[tuple[str, str], OpRule] = {  # (domain, op type) -> rule; register_channel_rule adds more
    ("com.microsoft", "Attention"): FusedAttentionRule(),  # frozen with its reason (QKV weight inside the op)
    ("com.microsoft", "MultiHeadAttention"): FusedAttentionRule(),
    **{("com.microsoft", op): LayerNormRule() for op in ("SkipLayerNormalization", "SimplifiedLayerNormalization",
                                                         "SkipSimplifiedLayerNormalization")},
    **{("com.microsoft", op): PassRule() for op in ("Gelu", "FastGelu", "QuickGelu")},
}

logger = logging.getLogger(__name__)


def rule_for(op: str, domain: str = "") -> OpRule:
    """The rule of ``op`` in ``domain``, or the freezing default."""
    if domain in ONNX_DOMAINS:
        return RULES.get(op, DEFAULT_RULE)
    return CUSTOM_RULES.get((domain, op), DEFAULT_RULE)


def register_channel_rule(op_type: str, rule: OpRule, domain: str = "") -> None:
    """Teach the channel analysis an op it does not know (a custom op): ``rule`` maps its channels.

    ``rule`` is an :class:`OpRule` instance, usually one of the shipped
    families: ``PassRule()`` for an op whose channels pass through one to one
    (an activation), ``ElementwiseRule()`` for a broadcasting binary op,
    ``SpatialRule()`` for pooling; or a subclass with its own ``propagate``
    and ``rewrite``. The exactness check still proves every pruned model, so a
    wrong rule is refused there, never written. For an op of ONNX's own domain
    it replaces the built-in rule.
    """
    if not isinstance(op_type, str) or not op_type:
        raise InvalidArgumentError(f"register_channel_rule: op_type must be a non-empty string, got {op_type!r}")
    if not isinstance(rule, OpRule):
        raise InvalidArgumentError(f"register_channel_rule: rule must be an OpRule instance (e.g. PassRule()), "
                                   f"got {type(rule).__name__}")
    if not isinstance(domain, str):
        raise InvalidArgumentError(f"register_channel_rule: domain must be a string, got {domain!r}")
    if domain in ONNX_DOMAINS:
        RULES[op_type] = rule
    else:
        CUSTOM_RULES[(domain, op_type)] = rule
    logger.info("channel rule for %s%s: %s", f"{domain}." if domain else "", op_type, type(rule).__name__)
