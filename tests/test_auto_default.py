"""The default with calibration data: the oracle while it is affordable, energy with sensitivity allocation beyond."""

from onnxprune.config import PruneConfig
from onnxprune.scoring.auto import ORACLE_WORK, REFERENCE_IMAGES, resolve_criterion

LITE0 = (11_000, 385_187_552)      # EfficientNet-Lite0: prunable units, dense MACs
RESNET56 = (1072, 125_485_696)


def test_auto_picks_the_oracle_within_its_cost_and_energy_beyond():
    assert resolve_criterion("auto", *RESNET56, 256) == "oracle"          # ResNet-56 x 256 images
    assert resolve_criterion("auto", *LITE0, 256) == "energy"             # EfficientNet-Lite0 x 256
    per_image = ORACLE_WORK / REFERENCE_IMAGES
    assert resolve_criterion("auto", 1, per_image, 1) == "oracle"
    assert resolve_criterion("auto", 2, per_image, 1) == "energy"
    assert resolve_criterion("auto", 10, 1e6, 0) == "magnitude"                  # no data
    assert resolve_criterion("l2", 10**6, 1e12, 10**6) == "l2"                    # a named criterion stays


def test_fewer_images_never_flip_the_choice_to_the_oracle():
    """Lite0 with --calib-limit 64 once chose the oracle (18.5 min, 42.6% top-1 vs energy's 64% in 2 min)."""
    for images in (1, 16, 64, 128, 255, 256):
        assert resolve_criterion("auto", *LITE0, images) == "energy"
        assert resolve_criterion("auto", *RESNET56, images) == "oracle"
    assert resolve_criterion("auto", *RESNET56, 2048) == "oracle"     # 2.7e14: still affordable
    assert resolve_criterion("auto", *RESNET56, 4096) == "energy"     # 5.5e14: beyond the budget
    choices = [resolve_criterion("auto", 5000, 1e8, n) for n in range(1, 2000, 7)]
    # monotone in the images: once energy, never back to the oracle with more
    assert choices == sorted(choices, key=lambda c: c == "energy") and choices[0] == "oracle" and choices[-1] == "energy"


def test_auto_allocation_follows_the_criterion():
    assert PruneConfig(criterion="oracle", target_macs=0.5).allocation_for(True) == "greedy"
    assert PruneConfig(criterion="energy", target_macs=0.5).allocation_for(True) == "sensitivity"
    assert PruneConfig(criterion="energy", target_macs=0.5).allocation_for(False) == "greedy"
    assert PruneConfig(criterion="energy", percentage=30).allocation_for(True) == "greedy"
    assert PruneConfig(criterion="energy", target_macs=0.5, steps=2).allocation_for(True) == "greedy"
    assert PruneConfig(criterion="oracle", target_macs=0.5, allocation="spdy").allocation_for(True) == "spdy"
    assert not PruneConfig().needs_data and PruneConfig().criterion == "auto"
