"""Numbers in trainer configs: ``1e-3``-style floats (strings under PyYAML's YAML 1.1 rules) are
floats in config files, ``defaults:`` includes, ``--set`` values and ``loss.params``; ints and
numeric-looking strings are unchanged; the dumped config loads back to the same config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from trainers.config import (
    ConfigError,
    config_from_dict,
    config_to_dict,
    dump_yaml,
    load_config,
)

CONFIGS = Path(__file__).resolve().parents[1] / "trainers" / "configs"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1e-3", 1e-3), ("5e-4", 5e-4), ("2E-5", 2e-5), ("-2E+5", -2e5), ("+1e3", 1e3),
     ("1e30", 1e30), ("1.0e30", 1e30), ("1.0e5", 1e5), ("5.e3", 5e3), (".5e-2", 0.005),
     (".5", 0.5), ("5.", 5.0), ("1.0e-3", 1e-3), ("1", 1.0)],
)  # fmt: skip
def test_set_float_forms(text, expected):
    cfg = load_config(None, [f"optim.lr={text}"])
    assert type(cfg.optim.lr) is float and cfg.optim.lr == expected


def test_set_lr_1e_3_on_shipped_config():
    cfg = load_config(CONFIGS / "digits_emi.yaml", ["optim.lr=1e-3", "optim.weight_decay=5E-4"])
    assert type(cfg.optim.lr) is float and cfg.optim.lr == 0.001
    assert type(cfg.optim.weight_decay) is float and cfg.optim.weight_decay == 5e-4


def test_set_inf_and_malformed_floats():
    assert load_config(None, ["optim.grad_clip=.inf"]).optim.grad_clip == math.inf
    assert math.isnan(load_config(None, ["optim.grad_clip=.nan"]).optim.grad_clip)
    for bad in ("1e-3x", "1e", "e5", "1.2.3", "1e-"):
        with pytest.raises(ConfigError, match=r"optim\.lr: expected float, got '"):
            load_config(None, [f"optim.lr={bad}"])


def test_yaml_file_floats_with_defaults(tmp_path):
    path = _write(
        tmp_path,
        "exp.yaml",
        f"defaults: [{CONFIGS / 'digits_emi.yaml'}]\n"
        "optim: {lr: 5e-4, weight_decay: 1E-5, grad_clip: 1e30}\n"
        "eval: {knn_temperature: 7e-2}\n"
        "loss:\n  params: {ridge: 1e-6}\n",
    )
    cfg = load_config(path)
    assert type(cfg.optim.lr) is float and cfg.optim.lr == 5e-4
    assert type(cfg.optim.weight_decay) is float and cfg.optim.weight_decay == 1e-5
    assert type(cfg.optim.grad_clip) is float and cfg.optim.grad_clip == 1e30
    assert cfg.eval.knn_temperature == 0.07
    assert cfg.loss.params["ridge"] == 1e-6 and type(cfg.loss.params["ridge"]) is float
    assert cfg.loss.params["form"] == "joint"  # the rest still comes from the included file


def test_included_file_floats(tmp_path):
    _write(tmp_path, "inc.yaml", f"defaults: [{CONFIGS / 'base.yaml'}]\noptim: {{lr: 3e-4}}\n")
    top = _write(tmp_path, "top.yaml", "defaults: [inc]\ntrain: {epochs: 7}\n")
    cfg = load_config(top)
    assert type(cfg.optim.lr) is float and cfg.optim.lr == 3e-4
    assert cfg.train.epochs == 7


def test_loss_params_set_float():
    cfg = load_config(
        CONFIGS / "digits_emi.yaml", ["loss.params.ridge=1e-4", "loss.params.eps=-2.5E-7"]
    )
    assert type(cfg.loss.params["ridge"]) is float and cfg.loss.params["ridge"] == 1e-4
    assert cfg.loss.params["eps"] == -2.5e-7
    cfg = load_config(None, ["loss.params={ridge: 1e-4, order: 4}"])
    assert cfg.loss.params == {"ridge": 1e-4, "order": 4}
    assert type(cfg.loss.params["ridge"]) is float and type(cfg.loss.params["order"]) is int


def test_numeric_looking_strings_stay_strings(tmp_path):
    values = {"v": "1.2.3", "e": "e5", "trail": "1e", "sign": "1e-", "lead0": "09", "x": "1e5x"}
    cfg = load_config(None, [f"loss.params.{k}={v}" for k, v in values.items()])
    assert cfg.loss.params == values
    text = "loss:\n  params: {" + ", ".join(f"{k}: {v}" for k, v in values.items()) + "}\n"
    assert load_config(_write(tmp_path, "s.yaml", text)).loss.params == values
    # a string field keeps the raw text even when it now parses as a float
    assert load_config(None, ["train.run_dir=1e-3"]).train.run_dir == "1e-3"


def test_ints_stay_ints(tmp_path):
    cfg = load_config(
        None,
        ["train.epochs=10", "loss.params.order=6", "loss.params.h=0x1F", "loss.params.n=1_000",
         "model.widths=[8, 16]", "optim.lr=1"],
    )  # fmt: skip
    assert type(cfg.train.epochs) is int and cfg.train.epochs == 10
    assert cfg.loss.params == {"order": 6, "h": 31, "n": 1000}
    assert all(type(v) is int for v in cfg.loss.params.values())
    assert cfg.model.widths == [8, 16] and type(cfg.optim.lr) is float
    with pytest.raises(ConfigError, match=r"train\.epochs: expected int, got 100000\.0 \(float\)"):
        load_config(None, ["train.epochs=1e5"])
    path = _write(tmp_path, "i.yaml", "train: {epochs: 12, seed: 3}\noptim: {lr: 2}\n")
    cfg = load_config(path)
    assert type(cfg.train.epochs) is int and cfg.train.epochs == 12 and cfg.train.seed == 3
    assert type(cfg.optim.lr) is float and cfg.optim.lr == 2.0


def test_global_safe_loader_is_not_changed():
    assert yaml.safe_load("1e-3") == "1e-3"
    assert yaml.safe_dump("1e5").startswith("1e5")


def test_dump_round_trips(tmp_path):
    cfg = load_config(
        CONFIGS / "digits_emi.yaml",
        ["optim.lr=1e-5", "optim.weight_decay=5e-324", "optim.grad_clip=1e30",
         "eval.probe_weight_decay=1.5e-300", "optim.momentum=.inf", "train.run_dir=1e5",
         "loss.params.ridge=1e-4", "loss.params.tag=2E-5x", "data.on_device_max_gib=1e-3"],
    )  # fmt: skip
    # a string that the config loader reads as a float must be quoted in the dump
    cfg.loss.params["label"] = "1e-3"
    text = dump_yaml(cfg)
    path = _write(tmp_path, "config.yaml", text)
    assert load_config(path) == cfg
    assert config_from_dict(yaml.safe_load(text)) == cfg  # plain PyYAML reads it back too
    raw = yaml.safe_load(text)
    assert raw == config_to_dict(cfg)
    assert type(raw["optim"]["lr"]) is float and raw["loss"]["params"]["label"] == "1e-3"
