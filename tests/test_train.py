"""Training stage on the tiny model, CPU only: labels follow the erroneous-step spans, masked
tokens get no gradient, SFT lowers the loss, a LoRA merge equals the adapter model, DPO widens
the chosen-vs-rejected margin, an interrupted run resumes, multi-GPU relaunch command."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest

from tops.config import DEFAULT_EFFORT_PROMPTS, TrainConfig
from tops.errors import UserError
from tops.models import COMPLETE_MARKER

PROMPTS = dict(DEFAULT_EFFORT_PROMPTS)
# A correct step, an erroneous one, then its correction. As tops.masking cuts steps, the space
# before a word goes with that word (BPE glues them into one token).
FIRST = "Add them:"
WRONG = " {a} + {b} = {bad}."
FIXED = " Wait, that is wrong: {a} + {b} = {c}. The answer is \\boxed{{{c}}}."


def operands(i: int) -> tuple[int, int]:
    return 3 + i * 7 % 40, 5 + i * 11 % 40


def sft_rows(n: int = 12, steps: bool = False) -> pd.DataFrame:
    rows = []
    for i in range(n):
        a, b = operands(i)
        wrong, fixed = WRONG.format(a=a, b=b, bad=a + b + 1), FIXED.format(a=a, b=b, c=a + b)
        row = {"problem_id": f"p{i}", "question": f"What is {a} + {b}?", "effort": ("low", "medium", "high")[i % 3],
               "response": FIRST + wrong + fixed}
        if steps:
            cuts = np.cumsum([0, len(FIRST), len(wrong), len(fixed)]).tolist()
            row["steps"] = [{"start": s, "end": e, "erroneous": k == 1}
                            for k, (s, e) in enumerate(zip(cuts, cuts[1:], strict=False))]
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tiny model gains nothing from a second thread, and when other jobs share the two
    cores OpenMP's spinning made steps 10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_cfg(**overrides) -> TrainConfig:
    base = {"system_prompt": "effort", "learning_rate": 3e-3, "epochs": 2, "batch_size": 4,
            "max_length": 256, "logging_steps": 1, "save_steps": 100, "warmup_ratio": 0.0,
            "lr_scheduler": "constant"}
    return TrainConfig(**{**base, **overrides})


def tokenizer_of(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


# ---------------------------------------------------------------- examples and labels


def test_labels_follow_prompt_and_erroneous_spans(tiny_model_dir):
    from tops.train.examples import IGNORE, build_sft_examples

    data = sft_rows(6, steps=True)
    tok = tokenizer_of(tiny_model_dir)
    examples = build_sft_examples(data, tok, "effort", PROMPTS, max_length=256)
    assert examples.masked_tokens > 0
    for i, row in data.iterrows():
        text = tok.apply_chat_template(
            [{"role": "system", "content": PROMPTS[row.effort]}, {"role": "user", "content": row.question},
             {"role": "assistant", "content": row.response}], tokenize=False)
        start = text.index(row.response)
        wrong_start, wrong_end = start + row.steps[1]["start"], start + row.steps[1]["end"]
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        assert enc["input_ids"] == examples.input_ids[i]
        for (s, e), label, tid in zip(enc["offset_mapping"], examples.labels[i], enc["input_ids"], strict=True):
            touches_wrong = s < wrong_end and e > wrong_start
            if s < start or touches_wrong:
                assert label == IGNORE, (text[s:e], s, e)
            else:
                assert label == tid
        trained = tok.decode([t for t in examples.labels[i] if t != IGNORE])
        a, b = operands(i)
        assert trained == FIRST + FIXED.format(a=a, b=b, c=a + b) + "<|im_end|>\n"


def test_unconditioned_prompt_and_no_system(tiny_model_dir):
    from tops.train.examples import build_sft_examples

    tok = tokenizer_of(tiny_model_dir)
    data = sft_rows(2)
    with_none = build_sft_examples(data, tok, "none", PROMPTS, 256)
    text = tok.decode(with_none.input_ids[0])
    assert PROMPTS["none"] in text and PROMPTS["low"] not in text
    empty = build_sft_examples(data, tok, "none", {**PROMPTS, "none": ""}, 256)
    assert "system" not in tok.decode(empty.input_ids[0])


def test_refuses_examples_without_trainable_token(tiny_model_dir):
    from tops.train.examples import build_sft_examples

    tok = tokenizer_of(tiny_model_dir)
    data = sft_rows(3, steps=True)
    with pytest.raises(UserError, match=r"problem_id 'p0'.*prompt fills max_length=20"):
        build_sft_examples(data, tok, "effort", PROMPTS, max_length=20)
    data["response"] = [""] * 3
    data["steps"] = [[] for _ in range(3)]
    build_sft_examples(data, tok, "effort", PROMPTS, max_length=256)  # end-of-turn still trained
    with pytest.raises(UserError, match="unknown|no prompt"):
        build_sft_examples(data.assign(effort="extreme"), tok, "effort", PROMPTS, 256)


def test_everything_masked_is_named(tiny_model_dir):
    from tops.train.examples import build_sft_examples

    tok = tokenizer_of(tiny_model_dir)
    data = sft_rows(2)
    text = tok.apply_chat_template([{"role": "user", "content": data.question[0]},
                                    {"role": "assistant", "content": data.response[0]}], tokenize=False)
    tail = len(text) - text.index(data.response[0])  # the response and the end-of-turn after it
    data["steps"] = [[{"start": 0, "end": tail, "erroneous": True}], []]
    with pytest.raises(UserError, match=r"problem_id 'p0'.*every response token is in an erroneous step"):
        build_sft_examples(data, tok, "none", {**PROMPTS, "none": ""}, 256)


# ---------------------------------------------------------------- gradients


@pytest.mark.slow
@pytest.mark.parametrize("fused", [True, False], ids=["trl-fused-head", "model-loss"])
def test_masked_tokens_get_no_gradient(tiny_model_dir, tmp_path, fused):
    """Through the trainer's loss (TRL's fused head or the model's own): the hidden state
    predicting a masked token gets exactly zero gradient, every trained position a non-zero one."""
    from tops.train.sft import build_sft_trainer

    # one padded forward, so one hook sees the whole batch (other paths: tests/test_batching.py)
    trainer, _, _ = build_sft_trainer(sft_rows(8, steps=True), tiny_model_dir, tmp_path / "m",
                                      tiny_cfg(lora={"enabled": False}, fused_lm_head=fused,
                                               batching="length_grouped"), PROMPTS, progress=False)
    assert trainer.fused_lm_head is fused
    model = trainer.model
    model.train()
    captured = {}

    def keep(module, args, output):
        output.retain_grad()
        captured["hidden"] = output

    model.model.norm.register_forward_hook(keep)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.compute_loss(model, batch).backward()
    grad = captured["hidden"].grad[:, :-1].abs().sum(-1)
    predicts_trained = batch["labels"][:, 1:] != -100
    # masked tokens inside responses: between trained ones
    inside = predicts_trained.cummax(1).values & predicts_trained.flip(1).cummax(1).values.flip(1)
    assert (inside & ~predicts_trained).sum() > 0, "no masked response token in the batch"
    assert (grad[~predicts_trained] == 0).all()
    assert (grad[predicts_trained] > 0).all()


def test_fused_head_and_model_loss_agree(tiny_model_dir, tmp_path):
    """The CPU default (the model's own loss) trains on the same objective as TRL's fused head."""
    import torch

    from tops.train.sft import build_sft_trainer

    losses = {}
    for fused in (True, False):
        trainer, _, _ = build_sft_trainer(sft_rows(8, steps=True), tiny_model_dir, tmp_path / f"m{fused}",
                                          tiny_cfg(lora={"enabled": False}, fused_lm_head=fused), PROMPTS,
                                          progress=False)
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        with torch.no_grad():
            losses[fused] = float(trainer.compute_loss(trainer.model, batch))
    assert losses[True] > 0
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    assert TrainConfig().fused_lm_head is None  # auto: fused with CUDA only


# ---------------------------------------------------------------- SFT, LoRA merge, resume


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    from tops.train import train_sft

    out = tmp_path_factory.mktemp("sft") / "tag"
    summary = train_sft(sft_rows(12), tiny_model_dir, out, tiny_cfg(), PROMPTS, progress=False)
    return out, summary


@pytest.mark.slow
def test_sft_lowers_loss_and_writes_a_model_folder(lora_run, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    out, summary = lora_run
    curve = pd.read_parquet(out / "loss.parquet")
    assert summary["steps"] == 6 and len(curve) == 6
    assert curve["loss"].iloc[-1] < curve["loss"].iloc[0] - 0.3
    assert summary["examples"] == 12 and summary["masked_tokens"] == 0
    assert 0 <= summary["padding_share"] < 0.05 and summary["batching"] == "length_grouped"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "adapter/adapter_config.json",
                 "loss.png", "train_summary.json", COMPLETE_MARKER):
        assert (out / name).exists(), name
    model = AutoModelForCausalLM.from_pretrained(out)  # a plain model folder, no peft needed
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert model.dtype == torch.float32


@pytest.mark.slow
def test_rerun_returns_the_finished_run_and_refuses_other_inputs(lora_run, tiny_model_dir):
    from tops.train import train_sft

    out, summary = lora_run
    marker = (out / COMPLETE_MARKER).stat().st_mtime
    again = train_sft(sft_rows(12), tiny_model_dir, out, tiny_cfg(), PROMPTS, progress=False)
    assert again == json.loads(json.dumps(summary)) and (out / COMPLETE_MARKER).stat().st_mtime == marker
    with pytest.raises(UserError, match="other data or settings"):
        train_sft(sft_rows(10), tiny_model_dir, out, tiny_cfg(), PROMPTS, progress=False)


def test_run_key_keeps_the_effective_batch_only():
    from tops.train.common import run_key

    def key(**kw):
        return run_key("sft", "m", tiny_cfg(**kw), "data")

    assert key(batch_size=4, grad_accum=2) == key(batch_size=8, grad_accum=1)  # out-of-memory retry
    assert key(batch_size=4) != key(batch_size=8)
    assert key(logging_steps=3) == key(logging_steps=7)
    assert key(learning_rate=1e-4) != key()


def test_a_run_that_died_before_its_first_checkpoint_is_taken_over(tmp_path):
    from tops.train.common import KEY_FILE, open_out_dir

    out = tmp_path / "run"
    assert open_out_dir(out, "a") is None
    assert open_out_dir(out, "b") is None  # nothing to resume: the new run takes the folder
    assert json.loads((out / "checkpoints" / KEY_FILE).read_text()) == {"key": "b"}
    checkpoint = out / "checkpoints" / "checkpoint-5"  # a complete one (an incomplete one is discarded)
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text("{}")
    (checkpoint / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="other data or settings"):
        open_out_dir(out, "c")


@pytest.mark.slow
def test_lora_merge_gives_the_adapter_models_logits(lora_run, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, _ = lora_run
    ids = torch.tensor([tokenizer_of(out)("What is 12 + 30? 12 + 30 = 42.")["input_ids"]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        base_logits = base(ids).logits
        adapter_logits = PeftModel.from_pretrained(base, out / "adapter")(ids).logits
        merged_logits = AutoModelForCausalLM.from_pretrained(out)(ids).logits
    assert (adapter_logits - base_logits).abs().max() > 1e-2  # training changed something
    torch.testing.assert_close(merged_logits, adapter_logits, atol=1e-5, rtol=1e-5)


class _Interrupt(Exception):
    pass


@pytest.mark.slow
def test_interrupted_full_finetune_resumes_from_its_checkpoint(tiny_model_dir, tmp_path):
    from transformers import TrainerCallback

    from tops.train import train_sft
    from tops.train.common import KEY_FILE

    class StopAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise _Interrupt(state.global_step)

    cfg = tiny_cfg(lora={"enabled": False}, save_steps=3, bf16=True)
    out = tmp_path / "full"
    with pytest.raises(_Interrupt):
        train_sft(sft_rows(12), tiny_model_dir, out, cfg, PROMPTS, progress=False, callbacks=[StopAfterSave()])
    assert (out / "checkpoints" / "checkpoint-3").is_dir() and not (out / COMPLETE_MARKER).exists()
    summary = train_sft(sft_rows(12), tiny_model_dir, out, cfg, PROMPTS, progress=False)
    assert summary["resumed_from"].endswith("checkpoint-3")
    assert summary["steps"] == 6 and summary["trained_tokens"] == summary["tokens"]  # the 2nd epoch only
    curve = pd.read_parquet(out / "loss.parquet")
    assert curve["step"].tolist() == [1, 2, 3, 4, 5, 6]  # steps before the interruption kept
    assert not (out / "adapter").exists() and (out / "model.safetensors").exists()
    # finished: the checkpoints (optimizer state) are gone, the folder is still recognised
    assert not list((out / "checkpoints").glob("checkpoint-*")) and (out / "checkpoints" / KEY_FILE).exists()
    assert train_sft(sft_rows(12), tiny_model_dir, out, cfg, PROMPTS, progress=False) == summary


def test_keep_checkpoints_keeps_them(tiny_model_dir, tmp_path):
    from tops.train import train_sft

    out = tmp_path / "kept"
    train_sft(sft_rows(4), tiny_model_dir, out, tiny_cfg(save_steps=1, keep_checkpoints=True), PROMPTS,
              progress=False)
    assert list((out / "checkpoints").glob("checkpoint-*"))


# ---------------------------------------------------------------- DPO


def sequence_logps(model, tok, pairs: pd.DataFrame, system: str, column: str) -> np.ndarray:
    import torch

    out = []
    for question, answer in zip(pairs["question"], pairs[column], strict=True):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template([*messages, {"role": "assistant", "content": answer}], tokenize=False)
        p_len = len(tok(prompt, add_special_tokens=False)["input_ids"])
        ids = torch.tensor([tok(full, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logps = model(ids).logits[0, :-1].log_softmax(-1).gather(1, ids[0, 1:, None])[:, 0]
        out.append(float(logps[p_len - 1:].sum()))
    return np.asarray(out)


@pytest.mark.slow
def test_dpo_widens_the_chosen_vs_rejected_margin(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from tops.train import train_dpo

    ab = [operands(i) for i in range(8)]
    pairs = pd.DataFrame({
        "problem_id": [f"p{i}" for i in range(8)],
        "question": [f"What is {a} + {b}?" for a, b in ab],
        "chosen": [f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}." for a, b in ab],
        "rejected": [f"{a} + {b} = {a + b + 1}. Let me check: {a} + {b} = {a + b + 1}. "
                     f"The answer is \\boxed{{{a + b + 1}}}." for a, b in ab],
    })
    cfg = tiny_cfg(system_prompt="none", dpo_learning_rate=5e-3, beta=0.1, batch_size=4, dpo_epochs=2)
    summary = train_dpo(pairs, tiny_model_dir, tmp_path / "dpo", cfg, PROMPTS, progress=False)
    assert summary["steps"] == 4 and summary["learning_rate"] == 5e-3
    tok = tokenizer_of(tiny_model_dir)
    system = PROMPTS["none"]

    def margin(model_dir):
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        return (sequence_logps(model, tok, pairs, system, "chosen")
                - sequence_logps(model, tok, pairs, system, "rejected")).mean()

    assert margin(tmp_path / "dpo") > margin(tiny_model_dir) + 1.0
    curve = pd.read_parquet(tmp_path / "dpo" / "loss.parquet")
    assert "rewards/margins" in curve and curve["rewards/margins"].iloc[-1] > 0
    assert (tmp_path / "dpo" / COMPLETE_MARKER).exists()


def test_dpo_learning_rate_defaults_to_a_twentieth_of_sft():
    from tops.train.dpo import dpo_learning_rate

    assert dpo_learning_rate(TrainConfig(learning_rate=1e-5)) == pytest.approx(5e-7)
    assert dpo_learning_rate(TrainConfig(learning_rate=1e-5, dpo_learning_rate=2e-6)) == 2e-6


# ---------------------------------------------------------------- launch (batching: tests/test_batching.py)


def test_relaunch_command(tmp_path, monkeypatch):
    from tops.train import relaunch_command

    for var in ("LOCAL_RANK", "TOPS_LAUNCHED"):
        monkeypatch.delenv(var, raising=False)
    argv = ["train", "sft", "--config", "c.yaml", "--data", "x.parquet", "--base", "m", "--out", "o"]
    assert relaunch_command(argv, TrainConfig()) is None
    zero3 = tmp_path / "zero3.yaml"
    zero3.write_text("distributed_type: DEEPSPEED\n")
    cmd = relaunch_command(argv, TrainConfig(num_processes=8, accelerate_config=zero3))
    assert cmd == [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "8",
                   "--config_file", str(zero3), "-m", "tops.cli", *argv]
    assert "--multi_gpu" in relaunch_command(argv, TrainConfig(num_processes=2))
    with pytest.raises(UserError, match="accelerate_config"):
        relaunch_command(argv, TrainConfig(num_processes=2, accelerate_config=tmp_path / "missing.yaml"))
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert relaunch_command(argv, TrainConfig(num_processes=8)) is None


def test_accelerate_configs_parse():
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[1]
    for name, kind in (("zero3.yaml", "DEEPSPEED"), ("fsdp.yaml", "FSDP")):
        config = yaml.safe_load((repo / "configs" / "accelerate" / name).read_text())
        assert config["distributed_type"] == kind and config["mixed_precision"] == "bf16"
