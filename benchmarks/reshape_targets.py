"""Issue 17, item 4: prunable layers with run-time Reshape targets left as they are vs folded to constants.

"before" disables the folding (onnxprune.graph.normalize._fold_reshape_targets) for the run; "after"
is the default. Every shared model whose graph has a Reshape with a run-time target is listed.

Run: python benchmarks/reshape_targets.py
"""

from __future__ import annotations

from unittest import mock

import onnx

from core_models import SHAPES  # the input sizes the core table probes the dynamic models at
from common import SHARED, Timer, header, table, write_section
import onnxprune
from onnxprune.graph import normalize as normalize_module



def runtime_targets(model: onnx.ModelProto) -> int:
    inits = {t.name for t in model.graph.initializer}
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return sum(1 for n in model.graph.node if n.op_type == "Reshape" and n.input[1] not in inits | consts)


def main() -> None:
    rows = []
    for path in sorted((SHARED / "models").glob("*.onnx")):
        count = runtime_targets(onnx.load(str(path)))
        if not count:
            continue
        shapes = SHAPES.get(path.name)
        with mock.patch.object(normalize_module, "_fold_reshape_targets", lambda proto: proto):
            before = onnxprune.inspect(path, input_shapes=shapes)
        after = onnxprune.inspect(path, input_shapes=shapes)
        with Timer() as t:
            res = onnxprune.prune_model(path, percentage=30, input_shapes=shapes)
        frozen = lambda rep: sum(1 for g in rep.groups if g.frozen_reason and "Reshape" in g.frozen_reason)  # noqa: E731
        rows.append({"model": path.name, "Reshapes with run-time targets": count,
                     "prunable convs before": before.prunable_conv_num, "prunable convs after": after.prunable_conv_num,
                     "prunable kernels before": before.prunable_kernel_num,
                     "prunable kernels after": after.prunable_kernel_num,
                     "groups frozen at a Reshape before/after": f"{frozen(before)} / {frozen(after)}",
                     "30% pruned, max rel. err": f"{res.verification.max_rel_error:.1e}", "time (s)": f"{t.seconds:.1f}"})
        print(rows[-1], flush=True)
    text = header("Run-time Reshape targets folded to constants (issue 17)")
    text += ("\nA Reshape target computed from `Shape` (Shape -> Gather/Slice -> Cast/Unsqueeze -> Concat) whose "
             "run-time entries only copy dims of the reshaped tensor to their own position becomes a constant "
             "target with 0 there. before = that folding switched off; after = the default. The 30% run is "
             "data-free magnitude pruning with the folding, exactness relative to the output's range.\n\n")
    text += table(rows, list(rows[0]))
    write_section("reshape-targets", text)


if __name__ == "__main__":
    main()
