"""Sizes, cases and the checks of user input before anything runs."""

from __future__ import annotations

import re

from pathlib import Path

import pytest

from attnbench.harness.measure.parse import format_size, parse_size
from attnbench.harness.sweep.overrides import check_overrides
from attnbench.harness.errors import UserError
from attnbench.harness.sweep.plan import plan_cases
from attnbench.variants.presets import load_preset
from attnbench.variants.registry import VARIANTS

CONF = Path(__file__).resolve().parent.parent / "conf"


@pytest.mark.parametrize(("text", "value"), [("32k", 32768), ("1M", 1048576), ("4096", 4096), (7, 7), ("2K", 2048)])
def test_sizes(text, value):
    assert parse_size("seq", text) == value


@pytest.mark.parametrize(("text", "message"), [
    ("abc", "seq='abc' is not a size; use a positive integer or a k/M suffix like 32k"),
    ("0", "seq='0' is not allowed: seq must be a positive integer"),
    ("1.5k", "seq='1.5k' is not a size"),
])
def test_bad_sizes(text, message):
    with pytest.raises(ValueError, match="^" + message):
        parse_size("seq", text)


def test_format_size_round_trips():
    for n in (1024, 32768, 1048576, 100):
        assert parse_size("seq", format_size(n)) == n


def _cfg(**over):
    cfg = {"model": {**load_preset("tiny").as_dict()}, "variant": {"name": "all"}, "impl": {"name": "all"},
           "phase": "decode", "seq": "64", "batch": 1, "decode_len": 1, "dtype": "auto", "device": "cpu",
           "compile": "none", "attention": "self"}
    cfg.update(over)
    return cfg


def test_all_means_every_supported_combination():
    cases = plan_cases(_cfg())
    pairs = {(c.variant, c.impl) for c in cases}
    assert ("mla", "absorbed") in pairs and ("mha", "absorbed") not in pairs
    assert ("dsa", "absorbed") in pairs and ("dsa", "flex") not in pairs
    assert {c.variant for c in cases} == {"mha", "mqa", "gqa", "mla", "dsa"}  # tiny compresses queries: dsa
    # mha, mqa, gqa: eager, sdpa, flex; mla: those, hf, absorbed x4, expanded; dsa: mla's but flex, hf and
    # absorbed_native (no sparse kernel).
    assert len(cases) == 3 * 3 + 9 + 6
    assert {i for v, i in pairs if v == "dsa"} == {i for v, i in pairs if v == "mla"} - {"flex", "hf", "absorbed_native"}


def test_named_unsupported_combination_is_planned_to_be_skipped():
    cases = plan_cases(_cfg(variant={"name": "mha"}, impl={"name": "absorbed"}))
    assert [(c.variant, c.impl) for c in cases] == [("mha", "absorbed")]


def test_shape_overrides_and_phase_both():
    cases = plan_cases(_cfg(variant={"name": "mla"}, impl={"name": "eager"}, d_c=128, q_rank="none",
                            phase="both", seq="1k"))
    assert [c.phase for c in cases] == ["prefill", "decode"]
    assert cases[0].shape.d_c == 128 and cases[0].shape.q_rank is None and cases[0].seq == 1024


@pytest.mark.parametrize(("over", "message"), [
    ({"variant": {"name": "mxa"}}, "variant='mxa' is not one of: " + ", ".join([*VARIANTS.names(), "all"]) + "$"),
    ({"impl": {"name": "fast"}}, "impl='fast' is not one of: absorbed"),
    ({"batch": 0}, "batch=0 is not allowed"),
    ({"seq": "abc"}, "seq='abc' is not a size"),
    ({"heads": 8, "kv_heads": 3, "variant": {"name": "gqa"}}, "kv_heads=3 does not divide heads=8; valid kv_heads: 1, 2, 4, 8"),
    ({"d_r": 5, "variant": {"name": "mla"}}, "d_r=5 is odd"),
    ({"phase": "train"}, "phase='train' is not one of: decode, prefill, both"),
    ({"dtype": "int8"}, "dtype='int8' is not one of: auto, float32"),
])
def test_bad_job_configs(over, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        plan_cases(_cfg(**over))


def test_case_identity_ignores_keys_the_variant_does_not_use():
    a = plan_cases(_cfg(variant={"name": "mha"}, impl={"name": "eager"}, d_c=16))[0]
    b = plan_cases(_cfg(variant={"name": "mha"}, impl={"name": "eager"}, d_c=32))[0]
    c = plan_cases(_cfg(variant={"name": "mla"}, impl={"name": "eager"}, d_c=16))[0]
    d = plan_cases(_cfg(variant={"name": "mla"}, impl={"name": "eager"}, d_c=32))[0]
    from attnbench.variants.registry import VARIANTS

    assert a.case_id(VARIANTS.get("mha").uses) == b.case_id(VARIANTS.get("mha").uses)
    assert c.case_id(VARIANTS.get("mla").uses) != d.case_id(VARIANTS.get("mla").uses)


@pytest.mark.parametrize(("args", "message"), [
    (["variant=mxa"], "variant='mxa' is not one of: " + ", ".join(sorted(["all", *VARIANTS.names()]))),
    (["-m", "impl=eager,fast"], "impl='fast' is not one of: absorbed"),
    (["-m", "seq=1k,abc"], "seq='abc' is not a size"),
    (["seq=1k,abc"], "Ambiguous value for argument 'seq=1k,abc': a sweep needs -m"),
    # Hydra merges a list of group options and keeps the last: the job would measure absorbed only.
    (["impl=[eager,absorbed]"], re.escape("impl=[eager,absorbed]: impl takes one option per job (a list would "
                                          "merge them and keep the last); to measure each, sweep them: "
                                          "-m impl=eager,absorbed (or impl=all)")),
    (["-m", "variant=[mha,mla]"], re.escape("variant=[mha,mla]: variant takes one option per job")),
    (["model=[tiny,deepseek_v3]"], re.escape("model=[tiny,deepseek_v3]: model takes one option")),
    (["batch=0"], "batch=0 is not allowed: batch must be a positive integer"),
    (["model=gpt5"], "model='gpt5' is not one of: deepseek_v2"),
    (["colour=red"], "unknown key 'colour'; valid keys:"),
    (["phase=train"], "phase='train' is not one of: decode, prefill, both"),
])
def test_bad_overrides_are_one_line(args, message):
    with pytest.raises(UserError, match="^" + message) as info:
        check_overrides(args, CONF)
    assert "\n" not in str(info.value)


def test_good_overrides_pass():
    # Every job is composed and planned (8 here): a named unsupported pair (mha/absorbed) is a skip, not an error.
    check_overrides(["-m", "variant=mha,mla", "seq=1k,32k", "batch=1", "impl=eager,absorbed", "d_c=128",
                     "q_rank=none", "experiment=smoke", "measure.budget_s=1", "hydra.verbose=true"], CONF)
