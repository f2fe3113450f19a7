"""Fuzzing in CI: ~100 seeded random graphs, each prepared and pruned at a random plan (invariants 1-3).

Every graph must end verified exact (the surgery's own exactness check
passed) or with its groups frozen, each with a reason; never a broken model,
never an exception that is not ours. A quarter of them also go the whole
data-free way to a written file, which is read back and run.
``benchmarks/fuzz.py`` runs the same generator over thousands of seeds.
"""

from __future__ import annotations

import logging

import pytest

from fuzz_graphs import REFUSED, SUPPORTED, check_model, random_model

SEEDS = range(100)


@pytest.fixture(autouse=True)
def _quiet():
    logging.disable(logging.WARNING)  # the analysis warns about every frozen group
    yield
    logging.disable(logging.NOTSET)


@pytest.mark.parametrize("chunk", range(4))
def test_random_graphs_prune_exact_or_freeze(chunk, tmp_path):
    bad = []
    for seed in SEEDS[chunk::4]:
        out = check_model(seed, plans=1, write_dir=tmp_path if seed % 4 == 0 else None)
        if out.kind not in ("verified", "all frozen"):
            bad.append((seed, out.blocks, out.kind, out.detail))
    assert not bad, bad


def test_generator_covers_every_block():
    """The CI seeds draw every block and are deterministic."""
    seen = set()
    for seed in SEEDS:
        seen.update(random_model(seed)[1])
    assert set(SUPPORTED) | set(REFUSED) <= seen
    assert random_model(7)[0].SerializeToString() == random_model(7)[0].SerializeToString()


def test_fuzz_outcomes_are_classified():
    """A seed whose graph reaches an unknown op freezes with that reason, and is counted by class."""
    for seed in SEEDS:
        if "unknown" in random_model(seed)[1]:
            out = check_model(seed, plans=1)
            assert out.kind in ("verified", "all frozen")
            assert out.frozen and all(k.strip() for k in out.frozen)
            return
    pytest.fail("no seed drew an unknown op")


def test_harness_reports_a_wrong_surgery(monkeypatch):
    """The harness is not vacuous: an unmasked reference makes the exactness check, and so the seed, fail."""
    import onnxprune.passes.prune as prune_pass
    monkeypatch.setattr(prune_pass, "masked_reference", lambda analysis, removed: analysis.proto)
    kinds = {check_model(seed, plans=1).kind for seed in range(8)}
    assert "broken" in kinds


def test_harness_reports_a_crash(monkeypatch):
    """A rule raising a plain exception (a bug) is reported as a crash, never as a freeze reason."""
    from onnxprune.graph.rules import RULES

    def boom(a, node):
        raise KeyError("bug")
    monkeypatch.setattr(RULES["Relu"], "propagate", boom)
    kinds = {check_model(seed, plans=1).kind for seed in range(8)}
    assert "crash" in kinds
