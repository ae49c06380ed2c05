"""Depth controls (tops/depth.py): budget forcing and AlphaOne.

Two layers. A scripted fake engine (one character = one token) pins the exact mechanics:
what is appended when, how tokens are counted, the first call's fan-out. The tiny random
model, through the transformers engine and the session's vLLM engine, checks the observable
rules, which hold whatever the (noise) text says: a minimum budget gives its N continuations,
a maximum budget is never exceeded before the answer, AlphaOne inserts no "Wait" after the
alpha moment, and every sample records what was injected. Test-only delimiters and paragraph
breaks that the tiny model writes often keep the runs to a few short rounds.
"""

from __future__ import annotations

import json

import pytest

from tops.config import (
    AlphaOneConfig,
    BudgetForcingConfig,
    GenerateConfig,
    SamplingConfig,
    load_config,
)
from tops.depth import generate_controlled, generate_with_depth
from tops.engines import Completion, Request
from tops.engines.base import samples_per_request
from tops.errors import UserError

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- a scripted engine


class ScriptEngine:
    """The protocol with a deterministic "model": after any prefix it writes `script` (from
    the start, or with continue_=True from the prefix's length on, i.e. it continues the
    script); "$" is its end of sequence. One character = one token; like vLLM, a stop string
    is cut from the text but its tokens are in n_tokens. `chars_per_token` > 1 makes the
    engine's own counts differ from count_tokens (which stays one per character)."""

    name = "script"

    def __init__(self, script, continue_: bool = False, chars_per_token: int = 1,
                 max_model_len: int | None = None):
        self.script, self.continue_, self.cpt, self.max_model_len = script, continue_, chars_per_token, max_model_len
        self.calls: list[dict] = []

    def generate(self, requests, n, sampling):
        counts = samples_per_request(n, len(requests))
        self.calls.append({"requests": len(requests), "n": n, "max_tokens": sampling.max_tokens,
                           "stop": list(sampling.stop), "prefixes": [r.prefix for r in requests]})
        return [[self._one(r, sampling)] * count for r, count in zip(requests, counts, strict=True)]

    def _one(self, request, sampling) -> Completion:
        script = self.script(request) if callable(self.script) else self.script
        stream = script[len(request.prefix):] if self.continue_ else script
        max_tokens = sampling.max_tokens
        if self.max_model_len is not None:
            max_tokens = min(max_tokens, self.max_model_len - len(request.prefix))
        budget = max_tokens * self.cpt
        end, text, reason, stop_reason = None, None, "length", None
        if "$" in stream and stream.index("$") + 1 <= budget:
            end = stream.index("$") + 1
            text, reason = stream[:end - 1], "stop"
        for s in sampling.stop:
            pos = stream.find(s)
            if pos >= 0 and pos + len(s) <= budget and (end is None or pos + len(s) < end):
                end, text, reason, stop_reason = pos + len(s), stream[:pos], "stop", s
        if end is None:
            end = min(budget, len(stream))
            text = stream[:end]
        return Completion(text=text, n_tokens=-(-end // self.cpt), finish_reason=reason,
                          stop_reason=stop_reason)

    def count_tokens(self, texts):
        return [len(t) for t in texts]

    def close(self):
        pass


def _req(content="q", **meta) -> Request:
    return Request([{"role": "user", "content": content}], meta=meta)


def _one(engine, control, max_tokens=40, n=1, stop=()):
    out = generate_controlled(engine, [_req()], n, SamplingConfig(max_tokens=max_tokens, stop=list(stop)),
                              [control])
    return out[0]


def _check_records(sample) -> None:
    """The recorded injections are really in the response, where they say."""
    c = sample.completion
    assert c.n_injected == len(sample.injections) == len(c.injected)
    assert c.injected == tuple(i.text for i in sample.injections)
    for inj in sample.injections:
        assert c.text[inj.at_char:inj.at_char + len(inj.text)] == inj.text


# ---------------------------------------------------------------- exact mechanics


def test_min_budget_suppresses_the_end_and_appends_wait():
    engine = ScriptEngine("ab</think>c$")
    [s] = _one(engine, BudgetForcingConfig(min_continuations=2), max_tokens=80)
    c = s.completion
    # two ends suppressed (" Wait" instead of the delimiter), the third kept, then the answer
    assert c.text == "ab Waitab Waitab</think>ab</think>c"
    assert [i.kind for i in s.injections] == ["wait", "wait"] and c.injected == (" Wait", " Wait")
    assert s.thinking == "ab Waitab Waitab" and c.depth_control == "budget"
    assert c.finish_reason == "stop" and c.stop_reason is None
    # n_tokens: the engine's generated tokens (3 x "ab</think>" + "ab</think>c$") + 2 x " Wait"
    assert c.n_tokens == 3 * 10 + 12 + 2 * 5
    _check_records(s)


def test_min_budget_counts_end_of_sequence_as_an_end_of_thinking():
    """delimiter: null (no thinking block): the end of sequence is the attempt to stop."""
    [s] = _one(ScriptEngine("ab$"), BudgetForcingConfig(delimiter=None, min_continuations=3))
    assert s.completion.text == "ab Waitab Waitab Waitab" and s.completion.n_injected == 3


def test_max_budget_closes_the_thinking_and_lets_the_model_answer():
    engine = ScriptEngine("abcdefghijklmnopqrstuvwxyz$")
    cfg = BudgetForcingConfig(max_thinking_tokens=5, delimiter="</t>", answer_prefix=" A:")
    [s] = _one(engine, cfg, max_tokens=20)
    c = s.completion
    assert c.text == "abcde</t> A:abcdefgh"
    assert s.thinking == "abcde" and s.thinking_tokens == 5
    assert [(i.kind, i.text) for i in s.injections] == [("close", "</t> A:")]
    assert c.finish_reason == "length" and c.n_tokens == 20  # the cap holds for the whole response
    _check_records(s)


def test_max_budget_holds_in_tokens_of_the_text_when_engine_counts_differ():
    """The engine says 2 characters per token, count_tokens says 1: the thinking text is cut
    back to the budget as count_tokens sees it."""
    engine = ScriptEngine("abcdefghijklmnopqrstuvwxyz$", chars_per_token=2)
    cfg = BudgetForcingConfig(max_thinking_tokens=7, delimiter="</t>", answer_prefix=" A:")
    [s] = _one(engine, cfg, max_tokens=30)
    assert s.thinking == "abcdefg" and s.thinking_tokens == 7
    assert s.completion.text.startswith("abcdefg</t> A:")
    _check_records(s)


def test_min_and_max_together_max_wins():
    engine = ScriptEngine("abc</think>$")
    cfg = BudgetForcingConfig(min_continuations=10, max_thinking_tokens=12, answer_prefix=" A:")
    [s] = _one(engine, cfg, max_tokens=40)
    assert s.thinking_tokens <= 12 and "</think>" not in s.thinking
    waits = [i for i in s.injections if i.kind == "wait"]
    assert 1 <= len(waits) < 10
    assert all(i.at_tokens + 5 < 12 for i in waits)  # a Wait only where it and one more token fit
    _check_records(s)


def test_max_budget_without_room_for_the_answer_is_a_user_error():
    cfg = BudgetForcingConfig(max_thinking_tokens=30)
    with pytest.raises(UserError, match="no room for the answer"):
        _one(ScriptEngine("ab$"), cfg, max_tokens=32)


def test_user_stop_strings_still_end_a_controlled_sample():
    [s] = _one(ScriptEngine("abcdef</think>$"), BudgetForcingConfig(min_continuations=2), stop=["d"])
    assert s.completion.text == "abc" and s.completion.stop_reason == "d" and s.completion.n_injected == 0


def test_alphaone_waits_before_the_alpha_moment_and_replaces_wait_after(monkeypatch):
    class Always:  # every Bernoulli draw succeeds while p_wait > 0
        def random(self):
            return 0.0

    monkeypatch.setattr("tops.depth._rng", lambda *a: Always())
    engine = ScriptEngine("ab\n\nWait cd$")
    cfg = AlphaOneConfig(alpha=1.0, n_think=8)
    [s] = _one(engine, cfg, max_tokens=40)
    c = s.completion
    # paragraph break at t=4 < 8: p_wait = 0.5 -> "Wait" (t=8, the alpha moment); then the
    # model's own "Wait" becomes the delimiter; the answer is free
    assert c.text == "ab\n\nWaitab\n\n</think>ab\n\nWait cd"
    assert [(i.kind, i.text, i.at_tokens) for i in s.injections] == [("wait", "Wait", 4), ("replace", "</think>", 12)]
    assert s.alpha_moment == 8 and s.alpha_index == len("ab\n\nWait")
    assert "Wait" not in c.text[s.alpha_index:len(s.thinking)]
    assert c.depth_control == "alphaone"
    _check_records(s)


def test_alphaone_catches_a_wait_split_across_two_pieces():
    """The piece before the alpha moment stops mid-"Wait" at the token limit; the engine only
    matches stops in new text, the controller sees the whole word and replaces it."""
    engine = ScriptEngine("xxWait yy</think>zz$", continue_=True)
    [s] = _one(engine, AlphaOneConfig(alpha=1.0, n_think=3), max_tokens=40)
    assert s.completion.text.startswith("xx</think>")
    assert "Wait" not in s.thinking and [i.kind for i in s.injections] == ["replace"]


def test_alphaone_pilot_estimates_n_think():
    engine = ScriptEngine("abcdef</think>gh$")
    out = generate_controlled(engine, [_req(), _req()], 2, SamplingConfig(max_tokens=40), [AlphaOneConfig()] * 2)
    pilot = engine.calls[0]
    assert pilot["n"] == 1 and pilot["requests"] == 2 and pilot["stop"] == [] and pilot["max_tokens"] == 40
    assert all(s.alpha_moment == pytest.approx(1.4 * 6) for row in out for s in row)


def test_first_round_asks_for_n_samples_then_continues_each_alone():
    engine = ScriptEngine("ab</think>c$")
    out = generate_controlled(engine, [_req("q1"), _req("q2")], 3, SamplingConfig(max_tokens=80),
                              [BudgetForcingConfig(min_continuations=1)] * 2)
    assert [len(row) for row in out] == [3, 3]
    assert engine.calls[0]["n"] == 3 and engine.calls[0]["requests"] == 2
    assert all(call["n"] == 1 for call in engine.calls[1:])
    assert engine.calls[1]["requests"] == 6 and set(engine.calls[1]["prefixes"]) == {"ab Wait"}


def test_a_full_context_ends_the_sample_instead_of_failing():
    engine = ScriptEngine("abcdefghij" * 10, max_model_len=12)
    [s] = _one(engine, BudgetForcingConfig(min_continuations=1), max_tokens=40)
    assert s.completion.finish_reason == "length" and len(engine.calls) == 1


def test_generate_with_depth_keeps_order_and_leaves_other_efforts_alone():
    engine = ScriptEngine(lambda r: r.messages[-1]["content"] + "</think>!$")
    efforts = ["low", "medium", "low", "high"]
    reqs = [_req(f"q{i}-", effort=e, row=i) for i, e in enumerate(efforts)]
    depth = {"medium": BudgetForcingConfig(min_continuations=1), "high": AlphaOneConfig(n_think=50)}
    out = generate_with_depth(engine, reqs, 2, SamplingConfig(max_tokens=60), depth)
    assert [row[0].text.split("<", 1)[0][:3] for row in out] == ["q0-", "q1-", "q2-", "q3-"]
    assert [row[0].depth_control for row in out] == ["none", "budget", "none", "alphaone"]
    assert out[0][0].text == "q0-</think>!" and out[0][0].n_injected == 0
    assert out[1][0].text == "q1- Waitq1-</think>q1-</think>!" and out[1][0].n_injected == 1
    # no controls at all: exactly one plain engine call
    engine.calls.clear()
    generate_with_depth(engine, reqs, 2, SamplingConfig(max_tokens=60), {})
    assert len(engine.calls) == 1 and engine.calls[0]["requests"] == 4
    # a sample count per request (a shard mixing efforts): each request gets its own, controlled or not
    out = generate_with_depth(engine, reqs, [3, 2, 1, 2], SamplingConfig(max_tokens=60), depth)
    assert [len(row) for row in out] == [3, 2, 1, 2]
    assert [row[0].depth_control for row in out] == ["none", "budget", "none", "alphaone"]


def test_alphaone_draws_are_seeded_per_sample():
    from tops.depth import _rng

    cfg = AlphaOneConfig(seed=3)
    a = [_rng(cfg, _req(row=1, effort="high"), 0, j).random() for j in range(2)]
    b = [_rng(cfg, _req(row=1, effort="high"), 5, j).random() for j in range(2)]
    assert a == b and a[0] != a[1]  # meta, not batch position, decides
    assert _rng(AlphaOneConfig(seed=4), _req(row=1, effort="high"), 0, 0).random() != a[0]


# ---------------------------------------------------------------- config


def test_depth_config_from_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "generate:\n"
        "  depth:\n"
        "    low: {kind: budget, max_thinking_tokens: 100}\n"
        "    high: {kind: alphaone, alpha: 1.2, delimiter: null, answer_prefix: 'Final Answer:'}\n")
    cfg = load_config(path, ["generate.depth.medium.kind=budget", "generate.depth.medium.min_continuations=2"])
    assert isinstance(cfg.generate.depth["low"], BudgetForcingConfig)
    assert isinstance(cfg.generate.depth["high"], AlphaOneConfig) and cfg.generate.depth["high"].n_think is None
    assert cfg.generate.depth["medium"].min_continuations == 2
    assert GenerateConfig().depth == {}


@pytest.mark.parametrize(("override", "message"), [
    ("generate.depth.ultra.kind=alphaone", "unknown effort 'ultra'"),
    ("generate.depth.low.kind=slow", "generate.depth.low"),
    ("generate.depth.low.kind=budget", "min_continuations > 0 or max_thinking_tokens"),
    ("generate.depth.low.kind=alphaone", None),
])
def test_depth_config_errors(override, message):
    if message is None:  # a bare alphaone is valid: N_think from a pilot
        assert load_config(None, [override]).generate.depth["low"].alpha == 1.4
        return
    with pytest.raises(UserError, match=message):
        load_config(None, [override])


def test_alphaone_needs_something_to_close_with():
    with pytest.raises(ValueError, match="delimiter or an answer_prefix"):
        AlphaOneConfig(delimiter=None)
    with pytest.raises(ValueError, match="cannot also be"):
        AlphaOneConfig(wait_words=["</think>"])


# ---------------------------------------------------------------- the tiny model


@pytest.fixture(scope="module")
def hf_engine(tiny_model_dir, smoke_config):
    from tops.engines import make_engine

    engine = make_engine(str(tiny_model_dir), smoke_config.engine.model_copy(update={"kind": "hf"}))
    yield engine
    engine.close()


def _tiny_requests(k=3):
    return [_req(f"What is {i} + 1?", row=i, effort="high") for i in range(k)]


def _assert_min_rule(samples, cfg, cap):
    reached = 0
    for s in samples:
        _check_records(s)
        waits = [i for i in s.injections if i.kind == "wait"]
        assert len(waits) <= cfg.min_continuations
        if len(waits) < cfg.min_continuations:  # only the response cap may stop it early
            assert s.completion.finish_reason == "length"
        else:
            reached += 1
        for inj in waits:  # every "Wait" was continued by the model
            assert len(s.completion.text) > inj.at_char + len(inj.text)
        assert cfg.delimiter not in s.thinking  # every attempt to end was suppressed or ended it
        assert s.completion.n_tokens <= cap
    assert reached >= len(samples) // 2


def test_tiny_min_budget_gives_n_continuations(hf_engine):
    cfg = BudgetForcingConfig(delimiter="l", min_continuations=2)
    out = generate_controlled(hf_engine, _tiny_requests(), 2, SamplingConfig(max_tokens=48), [cfg] * 3)
    _assert_min_rule([s for row in out for s in row], cfg, 48)


def _assert_max_rule(samples, cfg, cap, engine):
    for s in samples:
        _check_records(s)
        thinking = s.completion.text.split(cfg.delimiter, 1)[0]
        assert thinking == s.thinking
        assert engine.count_tokens([thinking])[0] <= cfg.max_thinking_tokens
        assert s.completion.n_tokens <= cap
        closes = [i for i in s.injections if i.kind == "close"]
        assert len(closes) <= 1
        if closes:
            assert closes[0].at_char == len(s.thinking)
            assert s.completion.text[len(s.thinking):].startswith(cfg.delimiter + cfg.answer_prefix)


def test_tiny_max_budget_never_exceeded_before_the_answer(hf_engine):
    cfg = BudgetForcingConfig(max_thinking_tokens=10, answer_prefix=" Final Answer:")
    out = generate_controlled(hf_engine, _tiny_requests(), 2, SamplingConfig(max_tokens=32), [cfg] * 3)
    samples = [s for row in out for s in row]
    _assert_max_rule(samples, cfg, 32, hf_engine)
    assert all(s.completion.n_injected == 1 for s in samples)  # the tiny model never closes itself


def test_tiny_min_and_max_budget_together(hf_engine):
    cfg = BudgetForcingConfig(delimiter="l", min_continuations=4, max_thinking_tokens=14, answer_prefix=" A:")
    out = generate_controlled(hf_engine, _tiny_requests(), 2, SamplingConfig(max_tokens=32), [cfg] * 3)
    _assert_max_rule([s for row in out for s in row], cfg, 32, hf_engine)


def _assert_alphaone_rule(samples, cfg):
    for s in samples:
        _check_records(s)
        assert s.alpha_moment > 0
        for inj in s.injections:
            if inj.kind == "wait":
                assert inj.at_tokens < s.alpha_moment and inj.text.strip() == cfg.wait
                assert s.alpha_index is None or inj.at_char < s.alpha_index
            else:
                assert inj.kind == "replace" and inj.text == cfg.delimiter + cfg.answer_prefix
        if s.alpha_index is not None:  # after the alpha moment the thinking holds no wait word
            after = s.completion.text[s.alpha_index:len(s.thinking)]
            assert not any(w in after for w in cfg.wait_words)
    assert sum(i.kind == "wait" for s in samples for i in s.injections) > 0


def test_tiny_alphaone_no_wait_after_the_alpha_moment(hf_engine):
    # test-only paragraph breaks and wait words the tiny model writes often; N_think from a pilot
    cfg = AlphaOneConfig(alpha=0.5, paragraph_breaks=["l", "h"], wait_words=["Wait", "e", "n"])
    out = generate_controlled(hf_engine, _tiny_requests(), 2, SamplingConfig(max_tokens=40), [cfg] * 3)
    samples = [s for row in out for s in row]
    _assert_alphaone_rule(samples, cfg)
    assert len({s.alpha_moment for s in samples}) == 1  # one pilot estimate per control


def test_vllm_rules_and_generate_samples_columns(tmp_path, vllm_engine, smoke_config):
    """The same config on the vLLM engine: the rules hold, and `tops generate` rows record
    the control per sample, efforts without one untouched."""
    from tops.artifacts import read_artifact
    from tops.domains import load_problems
    from tops.generate import generate_samples

    budget = BudgetForcingConfig(max_thinking_tokens=10, answer_prefix=" Final Answer:")
    alpha = AlphaOneConfig(alpha=1.0, n_think=16, paragraph_breaks=["l", "h"], wait_words=["Wait", "e", "n"])
    reqs = _tiny_requests(2)
    out = generate_controlled(vllm_engine, reqs + reqs, 2, SamplingConfig(max_tokens=32), [budget] * 2 + [alpha] * 2)
    _assert_max_rule([s for row in out[:2] for s in row], budget, 32, vllm_engine)
    _assert_alphaone_rule([s for row in out[2:] for s in row], alpha)

    gen = GenerateConfig(efforts=["low", "medium", "high"], n_samples=2, sampling=SamplingConfig(max_tokens=32),
                         depth={"medium": budget, "high": alpha})
    problems = load_problems(smoke_config.problems, n=3)
    path = tmp_path / "samples.parquet"
    samples, summary = generate_samples(problems, vllm_engine, gen, smoke_config.efforts.prompts, path,
                                        model_name="tiny", progress=False)
    back = read_artifact(path, "samples")
    assert len(back) == 3 * 3 * 2
    assert not back.duplicated(["problem_id", "effort", "sample_idx"]).any()
    kinds = back.groupby("effort")["depth_control"].agg(set).to_dict()
    assert kinds == {"low": {"none"}, "medium": {"budget"}, "high": {"alphaone"}}
    assert (back.loc[back["effort"] == "low", "n_injected"] == 0).all()
    assert (back.loc[back["effort"] == "medium", "n_injected"] == 1).all()
    assert all(len(json.loads(inj)) == k for inj, k in zip(back["injected"], back["n_injected"], strict=True))
    assert back["n_tokens"].between(1, 32).all()
    medium = back[back["effort"] == "medium"]
    thinking = [r.split("</think>", 1)[0] for r in medium["response"]]
    assert max(vllm_engine.count_tokens(thinking)) <= 10


def test_hf_engine_cuts_at_the_earliest_stop_string(hf_engine):
    """Whatever order the stops are listed in, the first one in the text ends it (as in vLLM)."""
    tokens = hf_engine.tokenizer("ab cd ef gh", add_special_tokens=False)["input_ids"]
    out = hf_engine._completion(tokens, ["gh", "cd"])
    assert out.text == "ab " and out.stop_reason == "cd" and out.finish_reason == "stop"
    assert out.n_tokens == len(hf_engine.tokenizer("ab ", add_special_tokens=False)["input_ids"])
    assert hf_engine._completion(tokens, ["zz"]).finish_reason == "length"
