"""Reasoning models keep their thinking: in training text (SFT and DPO) whatever the chat
template does, in what the engines store, and in verification (a cut-off thought has no answer).
Tiny models carry a QwQ/R1-style template (thinking stripped from assistant messages, opened in
the generation prompt) and a Qwen3-style one (enable_thinking)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tops.config import EngineConfig, GenerateConfig, SamplingConfig, VerifyConfig
from tops.tiny import QWEN3_STYLE_TEMPLATE, R1_STYLE_TEMPLATE, build_tiny_model
from tops.train.examples import IGNORE, build_sft_examples

PROMPTS = {"none": "Solve.", "low": "Effort: low.", "medium": "Effort: medium.", "high": "Effort: high."}
THOUGHT = "<think>\nFirst 12 + 7 = 18.\nWait, 12 + 7 = 19.\n</think>\n\n"
ANSWER = "The answer is \\boxed{19}."
END = "<|im_end|>\n"


@pytest.fixture(scope="module")
def template_models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("reasoning")
    return {"r1": build_tiny_model(root / "r1", chat_template=R1_STYLE_TEMPLATE),
            "qwen3": build_tiny_model(root / "qwen3", chat_template=QWEN3_STYLE_TEMPLATE)}


@pytest.fixture(params=["r1", "qwen3"])
def reasoning_model(request, template_models):
    return request.param, template_models[request.param]


def _tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def _labelled(tok, labels) -> str:
    return tok.decode([t for t in labels if t != IGNORE])


def test_templates_strip_or_rewrite_thinking_as_described(reasoning_model):
    """The premise: rendering the response through the template loses or changes it."""
    kind, model_dir = reasoning_model
    tok = _tokenizer(model_dir)
    chat = [{"role": "user", "content": "What is 12 + 7?"}, {"role": "assistant", "content": THOUGHT + ANSWER}]
    rendered = tok.apply_chat_template(chat, tokenize=False)
    if kind == "r1":
        assert "First 12" not in rendered and tok.apply_chat_template(
            chat[:1], tokenize=False, add_generation_prompt=True).endswith("assistant\n<think>\n")
    else:  # Qwen3 keeps a well-formed block but adds an empty one to an answer without thinking
        assert THOUGHT + ANSWER in rendered
        plain = tok.apply_chat_template([chat[0], {"role": "assistant", "content": ANSWER}], tokenize=False)
        assert "<think>\n\n</think>\n\n" + ANSWER in plain
        off = tok.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True, enable_thinking=False)
        assert off.endswith("assistant\n<think>\n\n</think>\n\n")


def test_sft_labels_cover_the_whole_response(reasoning_model):
    kind, model_dir = reasoning_model
    tok = _tokenizer(model_dir)
    responses = [THOUGHT + ANSWER,  # thinking and answer
                 "<think>\nok\n</think>" + ANSWER,  # whitespace a template would rewrite
                 ANSWER]  # an answer without thinking (Qwen3 enable_thinking=False, a low effort)
    data = pd.DataFrame({"problem_id": ["a", "b", "c"], "question": ["What is 12 + 7?"] * 3,
                         "response": responses, "effort": ["high", "medium", "low"]})
    examples = build_sft_examples(data, tok, "effort", PROMPTS, max_length=256)
    for response, ids, labels in zip(responses, examples.input_ids, examples.labels, strict=True):
        assert _labelled(tok, labels) == response + END
        # as the model saw it: one opening (the R1 prompt's own when the response has none)
        opening = "<think>\n" if kind == "r1" and not response.startswith("<think>") else ""
        assert tok.decode(ids).endswith("<|im_start|>assistant\n" + opening + response + END)
    summary = examples.rendering
    assert summary["template_keeps_thinking"] is (kind == "qwen3")
    if kind == "r1":
        assert summary["rows"] == {"template": 0, "generation": 3} and summary["rendering"] == "generation"
    else:  # only the well-formed block survives the Qwen3 template verbatim
        assert summary["rows"] == {"template": 1, "generation": 2} and summary["rendering"] == "mixed"


def test_sft_masks_erroneous_spans_inside_the_thinking(reasoning_model):
    _, model_dir = reasoning_model
    tok = _tokenizer(model_dir)
    response = THOUGHT + ANSWER
    wrong = response.index("First 12 + 7 = 18.")
    steps = [{"start": 0, "end": wrong, "erroneous": False},
             {"start": wrong, "end": wrong + len("First 12 + 7 = 18."), "erroneous": True},
             {"start": wrong + len("First 12 + 7 = 18."), "end": len(response), "erroneous": False}]
    data = pd.DataFrame({"problem_id": ["a"], "question": ["What is 12 + 7?"], "response": [response],
                         "steps": [steps]})
    examples = build_sft_examples(data, tok, "none", PROMPTS, max_length=256)
    trained = _labelled(tok, examples.labels[0])
    assert examples.masked_tokens > 0
    assert "18" not in trained and "Wait, 12 + 7 = 19." in trained and trained.endswith(ANSWER + END)


def test_dpo_chosen_and_rejected_cover_the_whole_responses(reasoning_model, tmp_path):
    """TRL's own tokenization of our preference rows: chosen / rejected ids decode to the whole
    responses (thinking included) plus the end of turn."""
    from trl import DPOConfig, DPOTrainer

    from tops.config import TrainConfig
    from tops.train.dpo import preference_dataset

    kind, model_dir = reasoning_model
    tok = _tokenizer(model_dir)
    pairs = pd.DataFrame({"question": ["What is 12 + 7?", "What is 2 + 2?"],
                          "chosen": [THOUGHT + ANSWER, "<think>\n2 + 2 = 4\n</think>\n\n\\boxed{4}"],
                          "rejected": ["<think>\n12 + 7 = 18\n</think>\n\n\\boxed{18}", "\\boxed{5}"]})
    dataset = preference_dataset(pairs, TrainConfig(system_prompt="none"), PROMPTS, tok)
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_length=256, report_to=[], use_cpu=True,
                     per_device_train_batch_size=2)
    trainer = DPOTrainer(model=str(model_dir), args=args, train_dataset=dataset, processing_class=tok)
    rows = trainer.train_dataset
    for i, row in pairs.iterrows():
        assert tok.decode(rows[i]["chosen_ids"]) == row["chosen"] + "<|im_end|>"
        # A response without its own opening, paired with one that has it, gets the opening the
        # R1 prompt writes (the text the model saw); elsewhere it is the response as it is.
        opening = "<think>\n" if kind == "r1" and not row["rejected"].startswith("<think>") else ""
        assert tok.decode(rows[i]["rejected_ids"]) == opening + row["rejected"] + "<|im_end|>"
        prompt = tok.decode(rows[i]["prompt_ids"])
        assert prompt.startswith("<|im_start|>system\nSolve.") and prompt.endswith("<|im_start|>assistant\n")


# ---------------------------------------------------------------- engines and verification


def _verify(responses: list[str], finish: list[str] | None = None) -> pd.DataFrame:
    from tops.verify import verify_samples

    samples = pd.DataFrame({
        "problem_id": [f"p{i}" for i in range(len(responses))], "question": ["q"] * len(responses),
        "answer": ["19"] * len(responses), "difficulty": [None] * len(responses), "effort": ["none"] * len(responses),
        "sample_idx": [0] * len(responses), "response": responses, "n_tokens": [10] * len(responses),
        "finish_reason": finish or ["stop"] * len(responses)})
    verified, _ = verify_samples(samples, VerifyConfig(workers=1), progress=False)
    return verified


def test_a_thought_cut_off_has_no_answer():
    verified = _verify([
        THOUGHT + ANSWER,  # closed: the answer after it counts
        "<think>\nMaybe \\boxed{19}? Let me check",  # cut off inside the thinking
        "<think>\nfirst</think>\n<think>\nsecond try \\boxed{19}",  # a second block never closed
        "Maybe \\boxed{19}.",  # a model without thinking blocks
    ], ["stop", "length", "length", "stop"])
    assert verified["verify_status"].tolist() == ["ok", "no_answer", "no_answer", "ok"]
    assert verified["correct"].tolist() == [True, False, False, True]


def test_hf_engine_stores_the_thinking_the_r1_prompt_opened(tmp_path, template_models):
    """The R1-style prompt writes `<think>\\n`; the stored response starts with it, so a response
    cut off by max_tokens reads as a cut-off thought and verifies as no_answer."""
    from tops.engines import make_engine
    from tops.generate import generate_samples

    engine = make_engine(str(template_models["r1"]), EngineConfig(kind="hf", dtype="float32", max_model_len=256))
    problems = pd.DataFrame({"problem_id": ["a", "b"], "question": ["What is 12 + 7?", "What is 2 + 2?"],
                             "answer": ["19", "4"], "difficulty": [None, None]})
    gen = GenerateConfig(efforts=["none"], n_samples=2, sampling=SamplingConfig(max_tokens=4))
    try:
        samples, _ = generate_samples(problems, engine, gen, PROMPTS, tmp_path / "s.parquet", "r1", progress=False)
    finally:
        engine.close()
    assert samples["response"].str.startswith("<think>\n").all()
    cut = samples[(samples["finish_reason"] == "length") & ~samples["response"].str.contains("</think>")]
    assert len(cut) > 0
    verified = _verify(cut["response"].tolist(), cut["finish_reason"].tolist())
    assert (verified["verify_status"] == "no_answer").all()


def test_template_arguments_reach_the_local_engine(template_models):
    """An effort expressed as chat-template arguments (Qwen3 enable_thinking=False) renders its
    closed empty block into the prompt; the response then has nothing to put back."""
    from tops.engines.base import Request
    from tops.engines.render import render_prompt, response_text
    from tops.generate import build_requests

    tok = _tokenizer(template_models["qwen3"])
    problems = pd.DataFrame({"question": ["What is 2 + 2?"]})
    low, high = build_requests(problems, ["low", "high"], {**PROMPTS, "low": ""},
                               {"low": {"enable_thinking": False}})
    assert low.chat_template_kwargs == {"enable_thinking": False} and high.chat_template_kwargs == {}
    assert [m["role"] for m in low.messages] == ["user"]  # an empty effort prompt: no system message
    assert render_prompt(tok, low).endswith("<think>\n\n</think>\n\n")
    assert render_prompt(tok, high).endswith("assistant\n")
    assert response_text(render_prompt(tok, low), low, ANSWER) == ANSWER
    r1 = _tokenizer(template_models["r1"])
    fresh = Request(messages=[{"role": "user", "content": "q"}])
    assert response_text(render_prompt(r1, fresh), fresh, "ok</think>4") == "<think>\nok</think>4"
    # a continuation (depth controls) resubmits the self-contained response: one opening only
    again = Request(messages=fresh.messages, prefix="<think>\nok")
    assert render_prompt(r1, again).endswith("<|im_start|>assistant\n<think>\nok")


def test_effort_template_arguments_are_validated():
    from tops.config import load_config
    from tops.errors import UserError

    configs = Path(__file__).resolve().parents[1] / "configs"
    smoke = configs / "smoke.yaml"
    native = ["efforts.native=true"]
    cfg = load_config(smoke, [*native, "efforts.template_kwargs={low: {enable_thinking: false}}"])
    assert cfg.efforts.template_kwargs == {"low": {"enable_thinking": False}}
    for overrides, message in [
        (["efforts.template_kwargs={low: {enable_thinking: false}}"], "needs efforts.native"),
        ([*native, "efforts.template_kwargs={ultra: {x: 1}}"], "unknown effort 'ultra'"),
        ([*native, "efforts.template_kwargs={none: {enable_thinking: false}}"], "training renders"),
    ]:
        with pytest.raises(UserError, match=message):
            load_config(smoke, overrides)
    qwen3 = load_config(configs / "qwen3-math.yaml")
    assert qwen3.efforts.native and [b.name for b in qwen3.eval.benchmarks] == ["math500", "aime24", "aime25"]
