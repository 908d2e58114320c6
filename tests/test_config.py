"""config.py: the operative config flattened into run parameters by gin's own parser."""

import gin
from electra_kit import config


def test_flatten_operative_config_keeps_gin_syntax_and_scopes():
    config.parse(["tiny.gin"], ["Electra.temperature = 0.5"])
    try:
        flat = config.flatten_operative_config(gin.config_str())
    finally:
        gin.clear_config()
    assert flat["TRAIN_STEPS"] == "30" and flat["train.steps"] == "%TRAIN_STEPS"
    assert flat["pretrain.objective"] == "@Electra" and flat["Electra.generator"] == "@generator/backbone()"
    assert flat["generator/backbone.name"] == "'transformer'" and flat["Electra.temperature"] == "0.5"
    assert not any(k.startswith(("include", "import")) for k in flat)


def test_flatten_reads_multi_line_values_as_one():
    flat = config.flatten_operative_config("a.b = [1,\n    2, 3]\n# comment\nscope/c.d = {'k': @e}\n")
    assert flat == {"a.b": "[1, 2, 3]", "scope/c.d": "{'k': @e}"}
