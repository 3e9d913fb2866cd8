"""Strict YAML configs, overrides, run info."""

import json

import pytest
import yaml

from diffdfkd.config import (
    ConfigError,
    ExperimentConfig,
    load_config,
    parse_overrides,
    replace,
    to_dict,
)
from diffdfkd.runinfo import write_run_info


def test_defaults_round_trip_through_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(to_dict(ExperimentConfig())))
    assert load_config(path) == ExperimentConfig()


def test_unknown_key_is_named_with_the_valid_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("guidance:\n  bn_wieght: 0.2\n")
    with pytest.raises(ConfigError, match=r"guidance\.bn_wieght") as error:
        load_config(path)
    assert "bn_weight" in str(error.value) and "ce_weight" in str(error.value)


def test_unknown_top_level_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sede: 3\n")
    with pytest.raises(ConfigError, match="sede.*valid keys.*seed"):
        load_config(path)


def test_overrides_apply_on_top_of_the_file_with_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\nsynth:\n  batch_size: 40\n")
    config = load_config(path, ["synth.batch_size=60", "guidance.bn_weight=1", "cutmix.at=[0.5]"])
    assert config.seed == 3
    assert config.synth.batch_size == 60
    assert config.guidance.bn_weight == 1.0 and isinstance(config.guidance.bn_weight, float)
    assert config.cutmix.at == (0.5,)


@pytest.mark.parametrize(
    "override, message",
    [
        ("synth.batch_size=abc", "must be int"),
        ("guidance.mode=magic", "choose from"),
        ("cutmix.enabled=3", "true or false"),
        ("nodots", "key.sub=value"),
        ("guidance.nope=1", "guidance.nope"),
    ],
)
def test_bad_values_fail_clearly(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_parse_overrides_nests():
    assert parse_overrides(["a.b.c=1", "a.d=x", "e=[1, 2]"]) == {"a": {"b": {"c": 1}, "d": "x"}, "e": [1, 2]}


def test_replace_nested():
    config = replace(ExperimentConfig(), **{"distill.epochs": 3, "seed": 7})
    assert config.distill.epochs == 3 and config.seed == 7


def test_run_info_written(tmp_path):
    write_run_info(tmp_path, ExperimentConfig(seed=5))
    assert load_config(tmp_path / "config.yaml") == ExperimentConfig(seed=5)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["seed"] == 5 and info["diffdfkd"] and info["git_sha"]


def test_shipped_configs_load():
    from pathlib import Path

    configs = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    for path in configs:
        load_config(path)
