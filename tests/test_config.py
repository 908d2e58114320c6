"""The operative config flattened into run parameters by gin's own parser (tracking.flatten_gin_config)."""

import gin
from electra_kit.config import gin_config as config
from electra_kit.tracking import flatten_gin_config


def test_flattened_config_resolves_macros_keeps_gin_syntax_and_scopes():
    config.parse(["tiny.gin"], ["Electra.temperature = 0.5"])
    try:
        flat = flatten_gin_config(gin.config_str())
    finally:
        gin.clear_config()
    assert flat["TRAIN_STEPS"] == "30" and flat["train.steps"] == "30"  # the macro's value, and the macro itself
    assert flat["pretrain.objective"] == "@Electra" and flat["Electra.generator"] == "@generator/backbone()"
    assert flat["generator/backbone.name"] == "'transformer'" and flat["Electra.temperature"] == "0.5"
    assert not any(k.startswith(("include", "import")) for k in flat)


def test_flatten_reads_multi_line_values_as_one():
    flat = flatten_gin_config("a.b = [1,\n    2, 3]\n# comment\nscope/c.d = {'k': @e}\n")
    assert flat == {"a.b": "[1, 2, 3]", "scope/c.d": "{'k': @e}"}
