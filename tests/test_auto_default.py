"""The default with calibration data: the oracle while it is affordable, energy with sensitivity allocation beyond."""

from onnxprune.config import PruneConfig
from onnxprune.scoring.auto import ORACLE_WORK, resolve_criterion


def test_auto_picks_the_oracle_within_its_cost_and_energy_beyond():
    assert resolve_criterion("auto", 1072, 125_485_696, 256) == "oracle"          # ResNet-56 x 256 images
    assert resolve_criterion("auto", 11_000, 385_187_552, 256) == "energy"        # EfficientNet-Lite0 x 256
    assert resolve_criterion("auto", 1, ORACLE_WORK, 1) == "oracle"
    assert resolve_criterion("auto", 2, ORACLE_WORK, 1) == "energy"
    assert resolve_criterion("auto", 10, 1e6, 0) == "magnitude"                  # no data
    assert resolve_criterion("l2", 10**6, 1e12, 10**6) == "l2"                    # a named criterion stays


def test_auto_allocation_follows_the_criterion():
    assert PruneConfig(criterion="oracle", target_macs=0.5).allocation_for(True) == "greedy"
    assert PruneConfig(criterion="energy", target_macs=0.5).allocation_for(True) == "sensitivity"
    assert PruneConfig(criterion="energy", target_macs=0.5).allocation_for(False) == "greedy"
    assert PruneConfig(criterion="energy", percentage=30).allocation_for(True) == "greedy"
    assert PruneConfig(criterion="energy", target_macs=0.5, steps=2).allocation_for(True) == "greedy"
    assert PruneConfig(criterion="oracle", target_macs=0.5, allocation="spdy").allocation_for(True) == "spdy"
    assert not PruneConfig().needs_data and PruneConfig().criterion == "auto"
