"""Batching paths and token budgets (tops.train.batching, tops.train.kernels), on CPU with the
tiny model: every path gives the loss and gradients of plain padded batches, every example
trains exactly once per epoch, no micro-batch exceeds its token budget, the summary names the
path; settings follow what is installed; out of memory becomes exit code 3."""

from __future__ import annotations

import numpy as np
import pytest

from tops.config import DEFAULT_EFFORT_PROMPTS, TrainConfig
from tops.errors import EXIT_OUT_OF_MEMORY
from tops.train.batching import micro_batch_cost, plan_micro_batches

PROMPTS = dict(DEFAULT_EFFORT_PROMPTS)
PATHS = ("padded", "length_grouped", "per_sequence", "padding_free_flex", "padding_free_flash")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """As in test_train.py: on two shared cores OpenMP's spinning made tiny steps 10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sft_rows(n: int):
    import pandas as pd

    rows = []
    for i in range(n):
        a, b = 3 + i * 7 % 40, 5 + i * 11 % 40
        working = " ".join(f"step {k}: {a} + {k} = {a + k}." for k in range(i % 7))  # varied lengths
        rows.append({"problem_id": f"p{i}", "question": f"What is {a} + {b}?", "effort": ("low", "medium", "high")[i % 3],
                     "response": f"{working} So {a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}."})
    return pd.DataFrame(rows)


def tiny_cfg(**overrides) -> TrainConfig:
    base = {"system_prompt": "effort", "learning_rate": 3e-3, "epochs": 1, "batch_size": 4, "max_length": 256,
            "logging_steps": 1, "save_steps": 100, "warmup_ratio": 0.0, "lr_scheduler": "constant",
            "lora": {"enabled": False}}
    return TrainConfig(**{**base, **overrides})


# ---------------------------------------------------------------- plans


@pytest.mark.parametrize("batching", PATHS)
@pytest.mark.parametrize("budget", [None, 1500])
@pytest.mark.parametrize("processes", [1, 3])
def test_plans_cover_every_example_once_within_the_budget(batching, budget, processes):
    rng = np.random.default_rng(1)
    lengths = rng.integers(20, 400, size=157).tolist()
    padding_free = batching not in ("padded", "length_grouped")
    settings = {"batching": batching, "batch_size": 8, "max_tokens": budget, "max_length": 400, "seed": 0,
                "processes": processes}
    plans = [plan_micro_batches(lengths, epoch=e, **settings) for e in range(3)]
    for plan in plans:
        assert sorted(i for batch in plan for i in batch) == list(range(157))  # each example once
        assert len(plan) == len(plans[0]) and len(plan) % processes == 0  # the same count every epoch
        costs = [micro_batch_cost([lengths[i] for i in b], padding_free) for b in plan]
        if budget is not None:
            assert max(costs) <= budget
        else:
            assert max(len(b) for b in plan) <= 8
        if batching != "padded":
            assert costs[0] == max(costs)  # the costliest micro-batch first: out of memory fails at once
    assert plan_micro_batches(lengths, epoch=1, **settings) == plans[1]  # a resumed run sees the same
    assert plans[1] != plans[2]
    if batching == "length_grouped":
        padded = sum(micro_batch_cost([lengths[i] for i in b], False) for b in plans[0])
        assert 1 - sum(lengths) / padded < 0.05
    if padding_free and budget is not None:  # best-fit rows come out nearly full
        assert sum(lengths) / (len(plans[0]) * budget) > 0.9


def test_fewer_examples_than_processes_still_gives_each_process_a_batch():
    plan = plan_micro_batches([30, 40], batching="per_sequence", batch_size=8, max_tokens=None, max_length=64,
                              seed=0, processes=3)
    assert len(plan) == 3 and sorted({i for b in plan for i in b}) == [0, 1]


def test_sampler_gives_each_rank_its_share():
    from tops.train.batching import MicroBatchSampler

    lengths = np.random.default_rng(0).integers(20, 300, size=90).tolist()
    samplers = [MicroBatchSampler(lengths, batching="per_sequence", batch_size=4, max_tokens=900, max_length=300,
                                  seed=0, rank=r, processes=2) for r in range(2)]
    for sampler in samplers:
        sampler.set_epoch(1)
    shares = [list(s) for s in samplers]
    assert len(shares[0]) == len(shares[1]) == len(samplers[0])
    assert sorted(i for share in shares for b in share for i in b) == list(range(90))


def test_budget_must_hold_one_example():
    with pytest.raises(ValueError, match="max_tokens_per_batch"):
        TrainConfig(max_length=1024, max_tokens_per_batch=512)


# ---------------------------------------------------------------- settings


def test_settings_follow_what_is_installed(tmp_path):
    from tops.cpu_dtype import cpu_has_native_bf16
    from tops.train.kernels import attention_for, choose_batching, model_dtype_for, resolve_setup

    assert choose_batching(TrainConfig()) == "length_grouped"  # CPU, no flash-attn
    assert choose_batching(TrainConfig(packing=False, batching="per_sequence")) == "padded"
    flash = TrainConfig(attn_implementation="flash_attention_2")
    assert choose_batching(flash) == "padding_free_flash" and attention_for(flash, "padding_free_flash") == "flash_attention_2"
    assert attention_for(TrainConfig(), "padding_free_flex") == "flex_attention"
    assert attention_for(TrainConfig(), "per_sequence") is None  # SDPA, is_causal, no mask

    assert not resolve_setup(TrainConfig(max_length=1024)).gradient_checkpointing
    assert resolve_setup(TrainConfig(max_length=4096)).gradient_checkpointing
    assert not resolve_setup(TrainConfig(max_length=4096, gradient_checkpointing=False)).gradient_checkpointing

    # with bf16 running (a GPU, or a CPU with bfloat16 kernels)
    assert model_dtype_for(TrainConfig(bf16=True, lora={"enabled": True}), bf16=True) == "bfloat16"  # frozen base
    assert model_dtype_for(TrainConfig(bf16=True, lora={"enabled": False}), bf16=True) == "float32"
    zero3, fsdp = tmp_path / "zero3.yaml", tmp_path / "fsdp.yaml"
    zero3.write_text("distributed_type: DEEPSPEED\n")
    fsdp.write_text("distributed_type: FSDP\n")
    sharded = {"bf16": True, "lora": {"enabled": False}, "num_processes": 8}
    assert model_dtype_for(TrainConfig(**sharded, accelerate_config=zero3), bf16=True) == "bfloat16"
    assert model_dtype_for(TrainConfig(**sharded, accelerate_config=fsdp), bf16=True) == "float32"
    # on this machine: bf16 as the hardware allows, and the model's dtype follows it
    native = cpu_has_native_bf16()
    setup = resolve_setup(TrainConfig(bf16=True, lora={"enabled": True}))
    assert setup.bf16 == native and setup.model_dtype == ("bfloat16" if native else "float32")
    assert not resolve_setup(TrainConfig(bf16=False)).bf16
    assert not resolve_setup(TrainConfig()).liger_kernels  # no CUDA here


def test_out_of_memory_retry_halves_the_micro_batch():
    from tops.train.common import halve_micro_batch, run_key

    cfg = TrainConfig(batch_size=8, grad_accum=1, max_length=1024, max_tokens_per_batch=8192)
    half = halve_micro_batch(cfg)
    assert (half.batch_size, half.grad_accum, half.max_tokens_per_batch) == (4, 2, 4096)
    assert run_key("sft", "m", half, "d") == run_key("sft", "m", cfg, "d")  # resumes the same run
    assert halve_micro_batch(TrainConfig(max_length=1024, max_tokens_per_batch=1500)) is None
    assert halve_micro_batch(TrainConfig(batch_size=1)) is None
    assert halve_micro_batch(TrainConfig(batch_size=3)).batch_size == 1


# ---------------------------------------------------------------- the same loss on every path


def epoch_loss_and_grad(trainer):
    """Sum of the trainer's own micro-batch losses over one epoch, each normalised by the
    epoch's trainable tokens (so the sum is the epoch's mean token loss), and its gradient."""
    import torch

    batches = [trainer._prepare_inputs(b) for b in trainer.get_train_dataloader()]
    items = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    model = trainer.model
    model.train()
    model.zero_grad()
    total = 0.0
    for batch in batches:
        loss = trainer.compute_loss(model, batch, num_items_in_batch=torch.tensor(items))
        loss.backward()
        total += float(loss.detach())
    grad = model.get_input_embeddings().weight.grad.clone()
    return total, grad, batches, items


@pytest.mark.slow
@pytest.mark.parametrize("fused", [False, True], ids=["model-loss", "trl-fused-head"])
def test_every_cpu_path_gives_the_padded_loss_and_gradient(tiny_model_dir, tmp_path, fused):
    import torch

    from tops.train.sft import build_sft_trainer

    data = sft_rows(22)
    results = {}
    for path, budget in (("padded", None), ("length_grouped", None), ("length_grouped", 600),
                         ("per_sequence", None), ("per_sequence", 600)):
        cfg = tiny_cfg(batching=path, max_tokens_per_batch=budget, fused_lm_head=fused)
        trainer, examples, _ = build_sft_trainer(data, tiny_model_dir, tmp_path / f"{path}-{budget}", cfg, PROMPTS,
                                                 progress=False)
        assert trainer.setup.batching == path
        loss, grad, batches, items = epoch_loss_and_grad(trainer)
        assert items == examples.trainable_tokens
        if budget is not None:
            assert max(b["input_ids"].numel() for b in batches) <= budget
        if path == "per_sequence":
            assert all("attention_mask" not in b and b["input_ids"].shape[0] == 1 for b in batches)
        results[(path, budget)] = (loss, grad)
    loss0, grad0 = results[("padded", None)]
    assert loss0 > 0
    for key, (loss, grad) in results.items():
        assert loss == pytest.approx(loss0, rel=1e-5), key
        torch.testing.assert_close(grad, grad0, rtol=1e-4, atol=1e-7), key


@pytest.mark.slow
def test_packed_rows_under_flex_attention_give_the_padded_loss(tiny_model_dir, tmp_path):
    """The padding-free row (the layout of the flash and flex paths): forward only, since flex
    attention has no backward on CPU (and flash-attn is CUDA-only)."""
    import torch

    from tops.train.sft import build_sft_trainer

    data = sft_rows(10)
    losses = {}
    for path in ("padded", "padding_free_flex"):
        # one packed row of all ten sequences: one shape, so flex attention compiles once (~20 s)
        trainer, _, _ = build_sft_trainer(data, tiny_model_dir, tmp_path / path,
                                          tiny_cfg(batching=path, max_tokens_per_batch=4096), PROMPTS, progress=False)
        assert trainer.model.config._attn_implementation == ("flex_attention" if path != "padded" else "sdpa")
        batches = [trainer._prepare_inputs(b) for b in trainer.get_train_dataloader()]
        if path != "padded":
            assert all("attention_mask" not in b and b["input_ids"].shape[0] == 1 for b in batches)
            assert len(batches) == 1 and int((batches[0]["position_ids"] == 0).sum()) == 10
        items = torch.tensor(sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches))
        with torch.no_grad():
            losses[path] = sum(float(trainer.compute_loss(trainer.model, b, num_items_in_batch=items)) for b in batches)
    assert losses["padding_free_flex"] == pytest.approx(losses["padded"], rel=1e-5)


# ---------------------------------------------------------------- training runs


@pytest.mark.slow
def test_a_budgeted_run_trains_every_example_once_per_epoch_and_names_its_path(tiny_model_dir, tmp_path):
    from tops.train import train_sft

    data = sft_rows(20)
    summary = train_sft(data, tiny_model_dir, tmp_path / "run",
                        tiny_cfg(batching="per_sequence", max_tokens_per_batch=500, epochs=2), PROMPTS,
                        progress=False)
    assert summary["batching"] == "per_sequence" and summary["setup"]["batching"] == "per_sequence"
    assert summary["trained_tokens"] == 2 * summary["tokens"]  # every example, once per epoch
    assert summary["padding_share"] == 0.0
    assert 0 < summary["largest_micro_batch_tokens"] <= 500
    assert summary["steps"] < 2 * 20  # a micro-batch holds several rows (batch_size is not used)
    assert summary["final_loss"] < summary["first_loss"]


# ---------------------------------------------------------------- out of memory


def test_out_of_memory_is_recognised_and_marked_for_the_launcher(tmp_path, monkeypatch):
    import torch

    from tops.train.common import (
        is_out_of_memory,
        launch_exit_code,
        oom_marker,
        out_of_memory_guard,
    )

    with pytest.raises(RuntimeError) as cpu:
        torch.empty(10**13)  # a real failed allocation (40 TB)
    assert is_out_of_memory(cpu.value) and is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert not is_out_of_memory(ValueError("bad value"))

    out = tmp_path / "model"
    for var in ("LOCAL_RANK", "TOPS_LAUNCHED"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(RuntimeError), out_of_memory_guard(out):
        torch.empty(10**13)
    assert not oom_marker(out).exists()  # a single process exits 3 itself (tops.cli)
    monkeypatch.setenv("LOCAL_RANK", "1")  # a rank under accelerate launch
    with pytest.raises(ValueError), out_of_memory_guard(out):
        raise ValueError("not memory")
    assert not oom_marker(out).exists()
    with pytest.raises(RuntimeError), out_of_memory_guard(out):
        torch.empty(10**13)
    assert oom_marker(out).exists()
    assert launch_exit_code(1, out) == EXIT_OUT_OF_MEMORY and not oom_marker(out).exists()
    assert launch_exit_code(1, out) == 1


@pytest.mark.slow
def test_full_weight_dpo_precomputes_the_reference(tiny_model_dir, tmp_path):
    import pandas as pd

    from tops.train import train_dpo
    from tops.train.dpo import reference_of

    pairs = pd.DataFrame({"problem_id": ["a", "b", "c", "d"], "question": [f"What is {k} + 2?" for k in range(4)],
                          "chosen": [f"{k + 2}." for k in range(4)], "rejected": [f"{k + 3}, I think." for k in range(4)]})
    cfg = tiny_cfg(system_prompt="none", batch_size=2, dpo_learning_rate=1e-3)
    summary = train_dpo(pairs, tiny_model_dir, tmp_path / "dpo", cfg, PROMPTS, progress=False)
    assert summary["reference"] == "log-probs precomputed" and summary["steps"] == 2
    assert summary["setup"]["max_tokens_per_batch"] is None
    assert reference_of(cfg.model_copy(update={"num_processes": 8})) == "reference model prepared like the policy"
    assert reference_of(TrainConfig()) == "adapter off"


def test_train_stage_turns_out_of_memory_into_exit_code_3(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """The stage runner's side (tops.stages.run_train): a real failed allocation anywhere in
    training exits EXIT_OUT_OF_MEMORY with one line, which the flow answers with half the
    micro-batch (tops/flow/tasks.py); a launched rank's failure arrives as that exit code."""
    import torch

    import tops.train
    from tops.artifacts import write_artifact
    from tops.config import load_config
    from tops.stages import run_train

    data = tmp_path / "samples.parquet"
    write_artifact(sft_rows(4).assign(answer="1", difficulty=None, sample_idx=0, n_tokens=1, finish_reason="stop"),
                   data, "samples")
    cfg = load_config(None, [f"model.base={tiny_model_dir}"])
    for var in ("LOCAL_RANK", "TOPS_LAUNCHED"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(tops.train, "train_sft", lambda *args: torch.empty(10**13))  # 40 TB
    with pytest.raises(SystemExit) as single:
        run_train(cfg, "sft", data, "samples", tmp_path / "model", argv=[])
    assert single.value.code == EXIT_OUT_OF_MEMORY
    assert "out of memory while training" in capsys.readouterr().err

    def launched_rank_ran_out(argv, train_cfg):
        raise SystemExit(EXIT_OUT_OF_MEMORY)  # what maybe_relaunch raises when a rank left its marker

    monkeypatch.setattr(tops.train, "maybe_relaunch", launched_rank_ran_out)
    with pytest.raises(SystemExit) as launched:
        run_train(cfg, "sft", data, "samples", tmp_path / "model", argv=[])
    assert launched.value.code == EXIT_OUT_OF_MEMORY
    assert "out of memory while training" in capsys.readouterr().err
    monkeypatch.setattr(tops.train, "maybe_relaunch", lambda argv, train_cfg: (_ for _ in ()).throw(SystemExit(1)))
    with pytest.raises(SystemExit) as failed:
        run_train(cfg, "sft", data, "samples", tmp_path / "model", argv=[])
    assert failed.value.code == 1 and "out of memory" not in capsys.readouterr().err
    assert not (tmp_path / "model").exists() and not list(tmp_path.glob("model.*"))  # no lock, no marker left
