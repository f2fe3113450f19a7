"""Fuzz run: thousands of seeded random graphs, each pruned at random plans and written (issue 17).

Uses the test suite's generator (tests/fuzz_graphs.py). Each graph ends as:
verified exact (every plan passed the exactness check and the written file
runs), all frozen (no prunable group; every frozen group has its reason),
our error (an OnnxPruneError), broken (an exactness failure or a written
model that does not run: never acceptable) or crash (any other exception:
never acceptable). Prints the counts, frozen-group reasons by class, and
writes its section of benchmarks/RESULTS.md.

    python benchmarks/fuzz.py --graphs 2000 --plans 2
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import header, table, write_section  # noqa: E402
from fuzz_graphs import check_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--graphs", type=int, default=2000)
    ap.add_argument("--first-seed", type=int, default=10_000, help="the CI tests use seeds 0-99")
    ap.add_argument("--plans", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    kinds: Counter = Counter()
    reasons: Counter = Counter()
    blocks: Counter = Counter()
    plans = 0
    failures = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="onnxprune-fuzz-") as tmp:
        for i, seed in enumerate(range(args.first_seed, args.first_seed + args.graphs)):
            out = check_model(seed, plans=args.plans, write_dir=None if args.no_write else tmp)
            kinds[out.kind] += 1
            reasons.update(out.frozen)
            blocks.update(set(out.blocks))
            plans += out.plans
            if out.kind in ("broken", "crash", "our error"):
                failures.append(out)
            for f in Path(tmp).glob("*.onnx"):
                f.unlink()
            if (i + 1) % 250 == 0:
                print(f"{i + 1} graphs, {time.perf_counter() - start:.0f} s: {dict(kinds)}", flush=True)
    seconds = time.perf_counter() - start
    n = args.graphs
    rows = [{"outcome": k, "graphs": kinds.get(k, 0), "share": f"{100 * kinds.get(k, 0) / n:.1f}%"}
            for k in ("verified", "all frozen", "our error", "broken", "crash")]
    reason_rows = [{"frozen-group reason (names and numbers taken out)": r.replace("|", "\\|"), "groups": c}
                   for r, c in reasons.most_common()]
    block_rows = [{"block": b, "graphs drawing it": c} for b, c in sorted(blocks.items())]
    text = header(f"Fuzzing: {n:,} random graphs, {args.plans} random plans each (issue 17)")
    text += (f"\nSeeds {args.first_seed}-{args.first_seed + n - 1} of `tests/fuzz_graphs.py` (CI runs seeds 0-99). "
             f"Each graph: prepare, {args.plans} random plans through the surgery with its exactness check "
             f"(on random inputs and a batch of 3 more), then"
             + (" the whole data-free path (l1, a random percentage) to a file that is read back and run. "
                if not args.no_write else " no write. ")
             + f"{plans:,} plans verified exact in {seconds:.0f} s (shared 2-core machine, other jobs running). "
             "\"verified\": every plan exact and the file runs; \"all frozen\": no prunable group, every "
             "frozen group with its reason; \"broken\" or \"crash\" would be bugs.\n\n")
    text += table(rows, ["outcome", "graphs", "share"])
    if failures:
        text += "\nNot verified or frozen:\n\n" + "".join(
            f"- seed {o.seed} ({o.kind}, blocks {', '.join(o.blocks)}): {o.detail.splitlines()[0][:200]}\n"
            for o in failures[:20])
    text += "\nFrozen groups by reason, over all graphs:\n\n"
    text += table(reason_rows, ["frozen-group reason (names and numbers taken out)", "groups"])
    text += "\nBlocks drawn:\n\n" + table(block_rows, ["block", "graphs drawing it"])
    print(text)
    write_section("fuzz", text)


if __name__ == "__main__":
    main()
