"""The rule book: each config field's annotation states its type and rule (rules.py parses it
once); config.check applies every rule and cross-field rule; --config values are coerced to the
type; --help prints the rule; comments describe and never decide. data.py's builder options use
the same parser."""
import dataclasses
import math
import os

import pytest

import config
import data
import rules
import solve
import train

MODEL_CONFIGS = [config.model_module(m).Config for m in config.MODELS]
CONFIGS = [train.TrainConfig, solve.SolveConfig] + MODEL_CONFIGS


@pytest.mark.parametrize("text,good,bad,words", [
    ("int", [0, -5, 2 ** 40], [1.0, True, "1"], "an int"),
    ("float", [0.0, -1e9, 3], [math.inf, math.nan, True, "x"], "a finite number"),
    ("str", ["", "abc"], [1, None], "a str"),
    ("bool", [True, False], [0, 1, "True"], "a bool"),
    ("int >= 1", [1, 10 ** 12], [0, -1, 1.0, True], "an integer >= 1"),
    ("int > 0", [1], [0], "an integer > 0"),
    ("int<=3", [3, -9], [4], "an integer <= 3"),
    ("float < 2.5", [2.4, -1e308], [2.5, math.nan, -math.inf], "a finite number < 2.5"),
    ("float > 0", [1e-300, 4], [0.0, -1.0, math.inf], "a finite number > 0"),
    ("float in [0, 1]", [0.0, 1.0, 1], [-1e-9, 1.0000001, math.nan], "in [0, 1]"),
    ("float in [0, 1)", [0.0, 0.999], [1.0, -0.1], "in [0, 1)"),
    ("float in (0,1]", [1.0, 1e-9], [0.0], "in (0, 1]"),
    ("int in [0, 2**32 - 2**16)", [0, 2 ** 32 - 2 ** 16 - 1], [-1, 2 ** 32 - 2 ** 16],
     "in [0, 2**32 - 2**16)"),
    ("str in rope|learned|none", ["rope", "none"], ["alibi", "", 1], "one of rope, learned, none"),
    ("str in a | b_2", ["a", "b_2"], ["c"], "one of a, b_2"),
])
def test_each_kind_of_rule_parses_and_checks(text, good, bad, words):
    rule = rules.parse(text)
    assert [v for v in good if rule.broken(v)] == []
    broken = [rule.broken(v) for v in bad]
    assert all(broken), (text, bad, broken)
    assert words in broken  # the error line's phrase (a value of another type names the type)


@pytest.mark.parametrize("text", ["integer", "int >= one", "int >= len(x)", "str >= 1",
                                  "bool in [0, 1]", "int in a|b", "float in [0 1]", "'int >= 1'",
                                  int, None])
def test_a_malformed_rule_is_refused(text):
    with pytest.raises(TypeError):
        rules.parse(text)


def test_postponed_annotations_are_refused_naming_the_field():
    """Under `from __future__ import annotations` the annotation "int >= 1" becomes "'int >= 1'"."""
    space = {}
    exec("from __future__ import annotations\nimport dataclasses\n"
         "@dataclasses.dataclass\nclass Postponed:\n    width: 'int >= 1' = 4\n", space)
    with pytest.raises(TypeError, match=r"Postponed.width: .*is not a rule"):
        rules.of(space["Postponed"])


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_config_field_states_a_rule_its_default_obeys(cls):
    found = rules.of(cls)
    assert list(found) == [f.name for f in dataclasses.fields(cls)]
    assert all(found[f.name].text == f.type for f in dataclasses.fields(cls))
    config.check(cls(), "m")  # defaults obey the field rules and the cross-field rules


@dataclasses.dataclass
class Misleading:
    """Comments that the old comment-reading checks obeyed, contradicting the annotations."""
    count: "int >= 1" = 1                 # any real (0 = off)
    mode: "str in a|b" = "a"              # a | b | c
    chance: "float" = 0.5                 # chance of a step (> 0)


def test_checks_come_from_the_annotation_not_the_comment():
    for bad, expect in ((dict(count=0), "'count' .*must be an integer >= 1, got 0"),
                        (dict(mode="c"), "'mode' .*must be one of a, b, got 'c'")):
        with pytest.raises(SystemExit, match=expect):
            config.check(Misleading(**bad), "m")
    config.check(Misleading(chance=-3.0), "m")  # "> 0" and "chance" in the comment decide nothing
    config.check(Misleading(chance=2.0), "m")
    assert "a | b | c" in config.describe(Misleading)  # the comment is still what --help describes


def test_help_prints_rule_default_and_comment():
    lines = config.describe(config.model_module("trm").Config).splitlines()
    line = next(x for x in lines if x.split()[0] == "hidden_size")
    assert line.split()[1:] == ["512", "int", ">=", "1", "D"]
    text = config.help_text(train.TrainConfig, data.DATASETS)
    assert "halt_exploration_prob   0.1          float in [0, 1]    ε: chance" in text
    assert "'stop'       str in stop|skip" in text


def test_config_values_are_coerced_to_the_annotated_type():
    tcfg, mcfg = train.TrainConfig(), config.model_module("trm").Config()
    changed = config.apply_overrides(["lr=1", "ema=false", "data=123", "H_cycles=5", "mlp_t=True"],
                                     tcfg, mcfg, "trm")
    assert changed == {"lr": 1.0, "ema": False, "data": "123", "H_cycles": 5, "mlp_t": True}
    assert type(tcfg.lr) is float
    for pair, expect in (("H_cycles=2.5", "'H_cycles' for model 'trm' takes an int .default 3., "
                                          "got '2.5'"),
                         ("lr=x", "'lr' takes a float .default 0.0001., got 'x'"),
                         ("ema=1", "'ema' takes a bool .default True., got '1'")):
        with pytest.raises(SystemExit, match=expect):
            config.apply_overrides([pair], train.TrainConfig(), MODEL_CONFIGS[0](), "trm")


@pytest.mark.parametrize("model,values,expect", [
    ("trm", dict(hidden_size=32, num_heads=3), "'num_heads' .*a divisor of hidden_size=32, got 3"),
    ("hrm", dict(hidden_size=36, num_heads=4), "'num_heads' for model 'hrm' .*even for RoPE"),
    ("prr", dict(num_steps=4, grad_steps=5), r"'grad_steps' .*in \[1, num_steps=4\], got 5"),
    ("prr", dict(puzzle_emb_ndim=0), r"'puzzle_emb_ndim' .*> 0 with num_branches=8 .*, got 0"),
    ("etrm", dict(encoder_type="iterative", tto_steps=2), "'tto_steps' .*feed-forward encoder"),
    ("etrm", dict(puzzle_emb_len=0), "'puzzle_emb_len' .*must be an integer >= 1, got 0"),
    ("deep_recursive", dict(n_inner=0), "'n_inner' for model 'deep_recursive' must be an integer"),
])
def test_field_and_cross_field_rules_of_the_models(model, values, expect):
    with pytest.raises(SystemExit, match=expect):
        config.check(config.model_module(model).Config(**values), model)


def test_a_rule_between_fields_applies_only_where_it_should():
    hrm = config.model_module("hrm")
    config.check(hrm.Config(hidden_size=36, num_heads=4, pos_encodings="learned"), "hrm")  # no RoPE
    config.check(config.model_module("etrm").Config(tto_steps=2), "etrm")  # a feed-forward encoder
    config.check(config.model_module("prr").Config(puzzle_emb_ndim=0, num_branches=1), "prr")


def test_global_batches_divide_among_the_processes():
    config.check(train.TrainConfig(global_batch_size=8, eval_batch_size=0), world=4)
    with pytest.raises(SystemExit, match="'eval_batch_size' = 6 is not divisible by the 4 proc"):
        config.check(train.TrainConfig(global_batch_size=8, eval_batch_size=6), world=4)


def test_dataset_options_use_the_same_rules(tmp_path):
    for options, expect in ((dict(num_train=-5), "num_train=-5 must be an integer >= 0"),
                            (dict(seed=2 ** 32), r"seed=4294967296 must be in \[0, 2\*\*32\)"),
                            (dict(num_rules=0), "num_rules=0 must be an integer >= 1"),
                            (dict(num_test=2.0), "num_test=2.0 must be an int")):
        with pytest.raises(data.DataError, match=expect):
            data.build("toy", str(tmp_path / "toy"), **options)
    assert os.listdir(tmp_path) == []
    paths = {"source", "concept_path"}  # checked when they are opened
    for name in data.DATASETS:
        for option in data.options_of(name):
            assert option.name in data.OPTION_RULES or option.name in paths, (name, option.name)
            rule = data.OPTION_RULES.get(option.name)
            if rule and option.default is not None:
                assert not rules.parse(rule).broken(option.default), (name, option)
