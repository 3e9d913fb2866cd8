"""Strict YAML configs, overrides, run info."""

import dataclasses
import json

import pytest
import torch
import yaml

from diffdfkd import runinfo
from diffdfkd.config import (
    ConfigError,
    ExperimentConfig,
    load_config,
    parse_overrides,
    replace,
    to_dict,
)
from diffdfkd.runinfo import cpu_model, write_run_info


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
        ("synth.batch_size=abc", "must be an integer"),
        ("guidance.mode=magic", "choose from"),
        ("cutmix.enabled=3", "true or false"),
        ("nodots", "key.sub=value"),
        ("guidance.nope=1", "guidance.nope"),
    ],
)
def test_bad_values_fail_clearly(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["guidance.recurrence=0"], "guidance.recurrence=0 must be > 0"),
        (["guidance.recurrence=2", "guidance.mode=none"], "mode none has none"),
        (["guidance.recurrence=2", "generator.scheduler=dpmpp_2m"], "use generator.scheduler ddpm or ddim"),
    ],
)
def test_recurrence_is_refused_where_it_cannot_run(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
    assert load_config(None, ["guidance.recurrence=2", "generator.scheduler=ddim"]).guidance.recurrence == 2


@pytest.mark.parametrize(
    "text, value", [("1e-3", 0.001), ("5e-4", 0.0005), (".5", 0.5), ("2", 2.0), ("1.5E+2", 150.0)]
)
def test_floats_are_read_as_yaml_1_2_reads_them(tmp_path, text, value):
    assert load_config(None, [f"distill.lr={text}"]).distill.lr == value
    path = tmp_path / "c.yaml"
    path.write_text(f"distill:\n  weight_decay: {text}\n")
    loaded = load_config(path).distill.weight_decay
    assert loaded == value and isinstance(loaded, float)


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf", ".NaN"])
def test_non_finite_numbers_are_refused_everywhere(text):
    for key in ("distill.lr", "distill.momentum", "guidance.step_size", "cutmix.at", "teacher.std"):
        value = f"[{text}, 1.0, 1.0]" if key in ("cutmix.at", "teacher.std") else text
        with pytest.raises(ConfigError, match="finite"):
            load_config(None, [f"{key}={value}"])


def test_strings_that_look_like_numbers_stay_strings_in_string_fields():
    assert load_config(None, ["generator.prompt='1e-3'"]).generator.prompt == "1e-3"


def test_yaml_tags_that_build_objects_are_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: !!python/object/apply:os.getpid []\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_parse_overrides_nests():
    assert parse_overrides(["a.b.c=1", "a.d=x", "e=[1, 2]"]) == {"a": {"b": {"c": 1}, "d": "x"}, "e": [1, 2]}


def test_replace_checks_what_it_sets_and_keeps_the_rest():
    base = ExperimentConfig()
    config = replace(base, **{"distill.epochs": 3})
    assert config.distill == dataclasses.replace(base.distill, epochs=3) and config.guidance == base.guidance
    with pytest.raises(ConfigError, match="distill.epochs=0 must be"):
        replace(base, **{"distill.epochs": 0})
    with pytest.raises(ConfigError, match="unknown config key distill.epoch"):
        replace(base, **{"distill.epoch": 3})
    with pytest.raises(ConfigError, match="guidance.bn_weight must be a number"):
        replace(base, **{"guidance.bn_weight": "high"})


def test_run_info_written(tmp_path):
    write_run_info(tmp_path, ExperimentConfig(seed=5))
    assert load_config(tmp_path / "config.yaml") == ExperimentConfig(seed=5)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["seed"] == 5 and info["diffdfkd"] and info["git_sha"]
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["cpu_model"] == cpu_model() and info["cpu_model"].strip()


def test_cpu_model_reads_the_model_name_line(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n")
    assert cpu_model(cpuinfo) == "AMD EPYC 7B13"
    monkeypatch.setattr(runinfo.platform, "processor", lambda: "aarch64")
    cpuinfo.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")  # no model name line, as on some ARM CPUs
    assert cpu_model(cpuinfo) == "aarch64"
    monkeypatch.setattr(runinfo.platform, "processor", lambda: "")
    assert cpu_model(tmp_path / "absent") == "unknown"


def test_the_shipped_configs_are_the_packaged_ones_and_round_trip():
    """``configs/`` (the README's) and ``src/diffdfkd/configs/`` (what an installed package reads) hold
    the same files; each loads, names a shipped world or its own parts, and survives a round trip
    through overrides."""
    from pathlib import Path

    from diffdfkd.worlds import list_worlds

    root = Path(__file__).resolve().parents[1]
    repo, packaged = (
        sorted((root / "configs").glob("*.yaml")),
        sorted((root / "src/diffdfkd/configs").glob("*.yaml")),
    )
    assert [p.name for p in repo] == [p.name for p in packaged] and repo
    for path, twin in zip(repo, packaged, strict=True):
        assert path.read_text() == twin.read_text(), f"{twin} differs from {path}"
        config = load_config(path)
        # a shipped world fills the empty parts; any other world names its own teacher and generator
        assert config.world in list_worlds() or (config.teacher.weights and config.generator.path), path
        assert (
            load_config(None, [f"{k}={json.dumps(v)}" for k, v in _flat(to_dict(config)).items()]) == config
        )


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out |= _flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


def test_the_config_reference_is_generated_from_the_schema_and_current():
    """``docs/config.md`` is ``make docs``'s output: every key of the schema, with its default and the
    comment written beside it; run ``make docs`` after changing the schema."""
    from pathlib import Path

    from diffdfkd.config.reference import config_reference, field_comments
    from diffdfkd.config.schema import GuidanceConfig
    from diffdfkd.runtime import flatten

    text = config_reference()
    for key, value in flatten(to_dict(ExperimentConfig())).items():
        assert f"| `{key}` |" in text and f"`{json.dumps(value)}`" in text, key
    assert "Guide only on steps whose fraction" in field_comments(GuidanceConfig)["window_start"]
    current = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    assert current == text, "docs/config.md is out of date: run `make docs`"
