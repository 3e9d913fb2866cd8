"""``benchmarks/tune_digits.py``: every candidate of its default sweep is a config the library accepts."""

import importlib.util
from pathlib import Path

import pytest

from diffdfkd.bench import WORLD_CONFIGS
from diffdfkd.config import load_config
from diffdfkd.synth.online_student import check_online

TUNE = Path(__file__).resolve().parents[1] / "benchmarks" / "tune_digits.py"


def _tune():
    spec = importlib.util.spec_from_file_location("tune_digits", TUNE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("world", sorted(WORLD_CONFIGS))
def test_every_sweep_candidate_passes_the_up_front_checks(world):
    sweep = _tune().SWEEP
    assert any("guidance.mode=none" in c for c in sweep)  # the unguided candidates are what can fail
    for candidate in sweep:
        check_online(load_config(WORLD_CONFIGS[world], candidate))
