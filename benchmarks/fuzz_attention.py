"""Issue 25: random graphs with a multi-head attention block (or a near miss) until 200 are drawn.

Each is prepared and pruned at 2 random plans by tests/fuzz_graphs.check_model (exactness verified);
counts the outcomes, the attention head groups found, and the freeze reasons in graphs with a near miss.

Run: python benchmarks/fuzz_attention.py
"""

from __future__ import annotations

import logging
import sys
from collections import Counter

from common import REPO, Timer, header, write_section
from onnxprune.pruning.prepare import prepare

sys.path.insert(0, str(REPO / "tests"))
from fuzz_graphs import check_model, random_model, reason_class  # noqa: E402 - the test suite's generator

GRAPHS = 200


def main() -> None:
    logging.disable(logging.WARNING)
    kinds, reasons, heads, bad = Counter(), Counter(), Counter(), []
    plans = n = seed = 0
    with Timer() as t:
        while n < GRAPHS:
            model, blocks = random_model(seed)
            seed += 1
            if not any("attention" in b for b in blocks):
                continue
            n += 1
            out = check_model(seed - 1, plans=2)
            kinds[out.kind] += 1
            plans += out.plans
            if out.kind not in ("verified", "all frozen"):
                bad.append(f"seed {seed - 1}: {out.kind} {out.detail[:200]}")
                continue
            for g in prepare(model).analysis.groups:
                if g.heads_of:
                    heads["frozen" if g.frozen else "prunable"] += 1
                if g.frozen and "odd_attention" in blocks:
                    reasons[reason_class(g.frozen_reason)] += 1
    text = header("Fuzzing attention blocks (issue 25)") + "\n"
    text += (f"{n} random graphs holding an attention block or a near miss (seeds 0-{seed - 1}), {t.seconds:.0f} s: "
             f"{kinds['verified']} verified exact at {plans} random plans, {kinds['all frozen']} all frozen, "
             f"{len(bad)} broken or crashed. Head groups: {heads['prunable']} prunable, {heads['frozen']} frozen. "
             "Most frequent freeze reasons in graphs with a near miss:\n\n")
    text += "\n".join(f"* {c} x {r}" for r, c in reasons.most_common(8)) + "\n"
    if bad:
        text += "\nBroken:\n\n" + "\n".join(f"* {b}" for b in bad) + "\n"
    print(text)
    write_section("fuzz-attention", text)


if __name__ == "__main__":
    main()
