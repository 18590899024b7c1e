from pathlib import Path

import pytest

from ddpmkit.config import Config, config_from_dict, dump_toml, load_config, parse_override
from ddpmkit.errors import UserError

CONFIGS = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("*.toml"))


def test_defaults_and_overrides_are_typed():
    cfg = load_config(None, ["train.lr=1e-4", "train.steps=10", "data.name=two-moons", "train.adam_betas=[0.9, 0.99]",
                             "model.options={ ch = 16 }", "data.flip=true"])
    assert cfg.train.lr == 1e-4 and cfg.train.steps == 10 and cfg.data.name == "two-moons"
    assert cfg.train.adam_betas == (0.9, 0.99) and cfg.model.options == {"ch": 16} and cfg.data.flip is True
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0  # ints are accepted for floats


def test_round_trip_through_toml_and_dict():
    import tomllib

    cfg = load_config(None, ["model.options={ ch = 16, ch_mult = [1, 2] }", 'run.out_dir="a b\\"c"'])
    assert config_from_dict(tomllib.loads(dump_toml(cfg))) == cfg
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("override,match", [
    ("train.lrr=1", r"unknown key 'lrr' in \[train\]; valid keys: steps, batch_size"),
    ("trian.lr=1", r"unknown section 'trian'; valid sections: run, data, diffusion, model, train"),
    ("train.steps=1.5", "train.steps must be an integer"),
    ("train.steps=true", "train.steps must be an integer"),
    ("data.flip=1", "data.flip must be true or false"),
    ("train.lr=fast", "train.lr must be a float"),
    ("model.options=3", "model.options must be a dict"),
])
def test_bad_values_name_what_is_wrong(override, match):
    with pytest.raises(UserError, match=match):
        load_config(None, [override])


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="section.key=value"):
        parse_override("train.lr")
    with pytest.raises(UserError, match="like section.key"):
        parse_override("lr=1")
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr = 1")
    with pytest.raises(UserError, match="not valid TOML"):
        load_config(bad)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config) and cfg.train.steps > 0


@pytest.mark.parametrize("name,params", [("cifar10-ddpm.toml", 35_746_307), ("cifar10-iddpm.toml", 52_546_438)])
def test_cifar10_configs_build_the_papers_networks(name, params):
    from ddpmkit.runs import build_model, resolve_network_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / name)
    net = build_model(resolve_network_config(cfg, (3, 32, 32), 10))
    assert sum(p.numel() for p in net.parameters()) == params


def test_network_options_that_contradict_the_data_are_refused():
    from ddpmkit.runs import resolve_network_config

    cfg = load_config(None, ["model.options={ in_channels = 3 }"])
    with pytest.raises(UserError, match="in_channels = 3 does not fit"):
        resolve_network_config(cfg, (1, 8, 8), 10)
    with pytest.raises(UserError, match="use model.kind = 'mlp' for points"):
        resolve_network_config(load_config(None), (2,), None)
