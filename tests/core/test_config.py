"""The one config base (:mod:`atomizer.core.config`): every config validates types, coerces what is
unambiguous, refuses unknown keys, and reports one line naming the field, the value and the type."""

from __future__ import annotations

import pytest
import yaml

from atomizer.core.config import Config, ConfigError
from atomizer.engine.pretraining import PretrainConfig
from atomizer.engine.training import TrainConfig
from atomizer.experiments import ExperimentSpec
from atomizer.models.adapters import AdapterConfig, AdapterError
from atomizer.models.atomizer import AtomizerConfig
from atomizer.models.baselines import CONFIGS


def test_yaml_strings_are_coerced_where_unambiguous(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("lr: 1e-3\nepochs: '3'\nrandom_window: true\n")
    assert yaml.safe_load(p.read_text())["lr"] == "1e-3"  # what PyYAML gives: a string
    cfg = TrainConfig.from_yaml(p)
    assert cfg.lr == 0.001 and isinstance(cfg.lr, float)
    assert cfg.epochs == 3 and isinstance(cfg.epochs, int)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("cls", "spec", "words"),
    [
        (TrainConfig, {"epochs": "two"}, ["training config", "epochs", "'two'", "int"]),
        (TrainConfig, {"lr": "fast"}, ["lr", "'fast'", "float"]),
        (TrainConfig, {"init": 3}, ["init", "3", "str | None"]),
        (PretrainConfig, {"steps": 1.5}, ["pretraining config", "steps", "1.5", "int"]),
        (AtomizerConfig, {"latent_dim": "wide"}, ["model config", "latent_dim", "'wide'", "int"]),
        (AtomizerConfig, {"encoding": {"pos_bands": "x"}}, ["encoding.pos_bands", "'x'", "int"]),
        (CONFIGS["resnet"], {"widths": "abc"}, ["resnet config", "widths"]),
    ],
)
def test_wrong_types_are_refused_in_one_line(cls, spec, words):
    with pytest.raises(ConfigError) as e:
        cls.from_dict(spec)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


@pytest.mark.parametrize("cls", [TrainConfig, PretrainConfig, AtomizerConfig, AdapterConfig, *CONFIGS.values()])
def test_unknown_keys_are_refused_by_name(cls):
    assert issubclass(cls, Config)
    with pytest.raises(ConfigError, match="lrr"):
        cls.from_dict({"lrr": 1})


def test_nested_unknown_keys_are_refused():
    with pytest.raises(ConfigError, match="encoding.pos_bandz"):
        AtomizerConfig.from_dict({"encoding": {"pos_bandz": 3}})


def test_post_init_checks_read_as_one_line():
    with pytest.raises(ConfigError, match="prune_p must be in"):
        AtomizerConfig.from_dict({"prune_p": 1.5})
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        TrainConfig.from_dict({"epochs": 0})
    with pytest.raises(AdapterError, match="rank"):
        AdapterConfig.from_any({"rank": "four"})


def test_presets_validate_their_overrides():
    assert AtomizerConfig.preset("tiny", latent_dim="32").latent_dim == 32
    with pytest.raises(ConfigError, match="latent_dim"):
        AtomizerConfig.preset("tiny", latent_dim="wide")
    cfg = AtomizerConfig.preset("small")
    assert AtomizerConfig.from_dict(cfg.to_dict()) == cfg  # nested encoding and tuples round-trip


def test_experiment_spec_missing_and_unknown(tmp_path):
    p = tmp_path / "e.yaml"
    p.write_text("name: x\nnotebook: n.ipynb\n")
    with pytest.raises(ConfigError, match="missing option 'output_dir'"):
        ExperimentSpec.from_yaml(p)
    p.write_text("name: x\nnotebook: n.ipynb\noutput_dir: o\nworkers: many\n")
    with pytest.raises(ConfigError, match="workers"):
        ExperimentSpec.from_yaml(p)


def test_not_a_mapping(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        TrainConfig.from_yaml(p)


def test_notebook_list_parameters():
    from atomizer.experiments import param_list

    assert param_list("atomizer,resnet") == ["atomizer", "resnet"]
    assert (
        param_list("[0, 1]", int) == [0, 1]
        and param_list(0, int) == [0]
        and param_list([10, 20], float) == [10.0, 20.0]
    )
