"""What SFT and DPO share: trainer arguments, LoRA, the output folder's life cycle (resume,
merge, loss curve, completion marker) and the relaunch under `accelerate launch`.

Output folder layout (callers rely on it):
    out_dir/                full model + tokenizer (a LoRA run is merged), loadable by
                            transformers and vLLM like any model folder
    out_dir/adapter/        the LoRA adapter, when LoRA is on
    out_dir/checkpoints/    Trainer checkpoints; a rerun resumes from the last one
    out_dir/loss.parquet, loss.png, train_summary.json
    out_dir/.tops-complete  written last: the folder is finished
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from tops.artifacts import atomic_write_table, atomic_write_text, fingerprint
from tops.config import TrainConfig
from tops.errors import EXIT_OUT_OF_MEMORY, UserError
from tops.launch import Command, in_launched_process, launch
from tops.layout import TRAIN_SUMMARY
from tops.models import COMPLETE_MARKER
from tops.train.kernels import TrainSetup
from tops.train.nodes import cluster_summary

KEY_FILE = "run_key.json"
# Settings that change how a run is watched or launched, not what it learns. The batch enters
# the key as its effective size only, so a retry with half the micro-batch and twice the
# accumulation (the flow's out-of-memory retry) resumes the same run.
_NOT_IN_KEY = ("logging_steps", "save_steps", "num_processes", "num_machines", "accelerate_config",
               "batch_size", "grad_accum", "max_tokens_per_batch", "keep_checkpoints",
               "report_to", "logging_dir")


# ---------------------------------------------------------------- processes


def is_main_process() -> bool:
    """Rank 0, or a single process. Read from the environment so it works before the Trainer
    (and accelerate's state) exists."""
    return int(os.environ.get("RANK", "0")) == 0


def relaunch_command(argv: Sequence[str], cfg: TrainConfig) -> list[str] | None:
    """The `accelerate launch` command line that reruns `tops <argv>` on cfg.num_processes
    processes, or None when this process should train itself."""
    if cfg.num_processes <= 1 or in_launched_process():
        return None
    from tops.train.nodes import machine_args

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(cfg.num_processes),
           *machine_args(cfg)]
    if cfg.accelerate_config is not None:
        if not Path(cfg.accelerate_config).exists():
            raise UserError(f"train.accelerate_config: {cfg.accelerate_config}: file not found")
        cmd += ["--config_file", str(cfg.accelerate_config)]
    else:
        cmd += ["--multi_gpu"]
    return [*cmd, "-m", "tops.cli", *argv]


def maybe_relaunch(argv: Sequence[str], cfg: TrainConfig) -> bool:
    """Rerun this `tops` command under `accelerate launch` when cfg asks for several processes.

    `argv` is the command's arguments after the program name (sys.argv[1:]). Returns True when
    the command ran in the launched processes (the caller has nothing left to do); raises
    SystemExit with their exit code when they failed; False when this process should train.
    """
    cmd = relaunch_command(argv, cfg)
    if cmd is None:
        return False
    out_dir = Path(argv[argv.index("--out") + 1]) if "--out" in argv[:-1] else None
    if out_dir is not None:
        oom_marker(out_dir).unlink(missing_ok=True)
    # tops.launch: its own process group, killed with everything in it if this process stops waiting
    [done] = launch([Command(cmd, "accelerate", env={"TOPS_LAUNCHED": "1"})],
                    log=lambda who, line: print(line, flush=True))
    code = done.returncode
    if code != 0:
        raise SystemExit(launch_exit_code(code, out_dir) if out_dir is not None else code)
    return True


def launch_exit_code(code: int, out_dir: Path) -> int:
    """Exit code of a failed launch: EXIT_OUT_OF_MEMORY when any process ran out of memory."""
    marker = oom_marker(out_dir)
    if marker.exists():
        marker.unlink()
        return EXIT_OUT_OF_MEMORY
    return code


# ---------------------------------------------------------------- out of memory


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or a CPU allocation that failed."""
    text = str(exc).lower()
    return (isinstance(exc, MemoryError) or exc.__class__.__name__ == "OutOfMemoryError" or "out of memory" in text
            or "can't allocate memory" in text)


def oom_marker(out_dir: Path) -> Path:
    """Left next to the output folder by a launched process that ran out of memory, so the
    launching process exits with EXIT_OUT_OF_MEMORY whatever code `accelerate launch` returns."""
    return out_dir.with_name(out_dir.name + ".oom")


@contextmanager
def out_of_memory_guard(out_dir: Path) -> Iterator[None]:
    """In a process started by `accelerate launch`, mark an out-of-memory for the launcher
    (maybe_relaunch); the exception goes on as it came."""
    try:
        yield
    except Exception as exc:
        if is_out_of_memory(exc) and in_launched_process():
            oom_marker(out_dir).touch()
        raise


def halve_micro_batch(cfg: TrainConfig) -> TrainConfig | None:
    """The out-of-memory retry: half the micro-batch (examples and token budget), twice the
    accumulation, so the step and the run key stay the same. None when it cannot shrink."""
    budget = cfg.max_tokens_per_batch
    smaller_budget = budget // 2 if budget is not None and budget // 2 >= cfg.max_length else None
    if budget is not None and smaller_budget is None:
        return None
    if budget is None and cfg.batch_size == 1:
        return None
    return cfg.model_copy(update={"batch_size": max(1, cfg.batch_size // 2), "grad_accum": cfg.grad_accum * 2,
                                  "max_tokens_per_batch": smaller_budget})


def peak_memory_gib() -> float | None:
    """Peak GPU memory allocated by this process since the run started (None on CPU)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


# ---------------------------------------------------------------- trainer pieces


@contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """Silence the datasets / transformers bars (map, weight loading) when progress is off."""
    import datasets
    from transformers.utils import logging as hf_logging

    before = (datasets.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled())
    if not enabled:
        datasets.disable_progress_bars()
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not enabled:
            if before[0]:
                datasets.enable_progress_bars()
            if before[1]:
                hf_logging.enable_progress_bar()


def uses_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def model_init_kwargs(setup: TrainSetup) -> dict[str, Any]:
    import torch

    kwargs: dict[str, Any] = {"dtype": {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                        "auto": "auto"}[setup.model_dtype]}
    if setup.attn_implementation:
        kwargs["attn_implementation"] = setup.attn_implementation
    return kwargs


def trainer_args(config_cls, cfg: TrainConfig, out_dir: Path, *, learning_rate: float,
                 epochs: float, progress: bool, setup: TrainSetup, **extra):
    """SFTConfig / DPOConfig from our TrainConfig and the resolved setup. TRL's own defaults
    (bf16 on, gradient checkpointing on) are overridden explicitly so the config alone decides."""
    from tops.tracking import for_trainer

    if setup.liger_kernels:
        extra.setdefault("use_liger_kernel", True)
    return config_cls(
        output_dir=str(out_dir / "checkpoints"),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=learning_rate,
        num_train_epochs=epochs,
        max_steps=cfg.max_steps or -1,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a share of the steps
        bf16=setup.bf16,
        fp16=False,
        gradient_checkpointing=setup.gradient_checkpointing,
        # non-reentrant: works with LoRA's frozen inputs and with activations that need no grad
        gradient_checkpointing_kwargs={"use_reentrant": False},
        torch_compile=setup.torch_compile,
        model_init_kwargs=model_init_kwargs(setup),
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,  # the last one may be half-written when a run is killed
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=uses_cpu(),
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # every trainable weight is used; True costs a graph walk
        report_to=for_trainer(cfg, out_dir) or "none",  # TensorBoard's folder: tops.tracking.point_tensorboard
        run_name=out_dir.name,
        disable_tqdm=not progress,
        **extra,
    )


def lora_config(cfg: TrainConfig):
    """peft LoraConfig, or None for full fine-tuning."""
    if not cfg.lora.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")


# ---------------------------------------------------------------- output folder


def run_key(kind: str, base_model: str | Path, cfg: TrainConfig, data_key: str,
            extra: dict | None = None) -> str:
    """Identity of a training run: what it learns from and how. A rerun with the same key
    resumes or returns the finished folder; a different key never reuses its checkpoints."""
    settings = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _NOT_IN_KEY}
    settings["effective_batch"] = cfg.batch_size * cfg.grad_accum * cfg.num_processes
    if cfg.max_tokens_per_batch is not None:
        settings["effective_batch"] = None
        settings["effective_tokens"] = cfg.max_tokens_per_batch * cfg.grad_accum * cfg.num_processes
    return fingerprint({"kind": kind, "base": str(Path(base_model).resolve()) if Path(base_model).exists()
                        else str(base_model), "train": settings, "data": data_key, **(extra or {})})


def open_out_dir(out_dir: Path, key: str) -> dict | None:
    """Prepare `out_dir` for a run with `key`: the finished run's summary when it is already
    done, None when training should start or resume. A folder holding checkpoints or a model
    from other inputs is refused rather than silently resumed or overwritten; one whose run
    died before its first checkpoint holds nothing and is taken over."""
    key_path = out_dir / "checkpoints" / KEY_FILE
    if key_path.exists():
        previous = json.loads(key_path.read_text()).get("key")
        nothing_kept = last_checkpoint(out_dir) is None and not (out_dir / COMPLETE_MARKER).exists()
        if previous != key and nothing_kept:
            if is_main_process():
                atomic_write_text(json.dumps({"key": key}), key_path)
            return None
        if previous != key:
            raise UserError(f"{out_dir}: holds a training run with other data or settings "
                            f"(run key {previous}, this one {key}); use another --out or delete it")
        if (out_dir / COMPLETE_MARKER).exists():
            return json.loads((out_dir / TRAIN_SUMMARY).read_text())
        return None
    if is_main_process():  # the other ranks would race with the key file written here
        if out_dir.exists() and any(out_dir.iterdir()):
            raise UserError(f"{out_dir}: exists and is not a tops training folder; use another --out")
        atomic_write_text(json.dumps({"key": key}), key_path)
    return None


def prune_checkpoints(out_dir: Path) -> None:
    """Delete the Trainer checkpoints of a finished run (the run key file stays, so the folder
    is still recognised)."""
    import shutil

    for checkpoint in (out_dir / "checkpoints").glob("checkpoint-*"):
        shutil.rmtree(checkpoint)


# A checkpoint's weights, in any of the forms the Trainer writes (full, LoRA adapter, sharded, FSDP,
# DeepSpeed); with trainer_state.json (written last) they make a checkpoint one can resume from.
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin",
            "pytorch_model.bin.index.json", "adapter_model.bin", "pytorch_model_fsdp_0", "global_step*")


def checkpoint_complete(checkpoint: Path) -> bool:
    """trainer_state.json (the Trainer writes it last) parses and the weights are there: a disk that
    filled up mid-checkpoint leaves a folder without them, which must not be resumed from."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return any(next(checkpoint.glob(pattern), None) is not None for pattern in _WEIGHTS)


def last_checkpoint(out_dir: Path) -> str | None:
    """The newest complete checkpoint (checkpoint_complete); incomplete ones are skipped."""
    folder = out_dir / "checkpoints"
    if not folder.is_dir():
        return None
    steps = sorted(((int(p.name.split("-")[1]), p) for p in folder.glob("checkpoint-*")
                    if p.is_dir() and p.name.split("-")[1].isdigit()), reverse=True)
    return next((str(p) for _, p in steps if checkpoint_complete(p)), None)


def drop_incomplete_checkpoints(out_dir: Path) -> None:
    """Delete checkpoints newer than the one a run resumes from (a full disk's leftovers): they
    hold space, and the Trainer's rotation would count them."""
    import shutil

    resume = last_checkpoint(out_dir)
    newest_ok = int(Path(resume).name.split("-")[1]) if resume else -1
    for checkpoint in (out_dir / "checkpoints").glob("checkpoint-*"):
        step = checkpoint.name.split("-")[1]
        if step.isdigit() and int(step) > newest_ok and not checkpoint_complete(checkpoint):
            shutil.rmtree(checkpoint, ignore_errors=True)


def disk_full(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is a full disk: torch.save reports it as a RuntimeError."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def save_model(trainer, base_model: str | Path, out_dir: Path, tokenizer) -> None:
    """Full weights into `out_dir`; with LoRA the adapter goes to `out_dir/adapter` and is
    merged into a fresh copy of the base (on the main process), which works the same whether
    training ran on one process or sharded under ZeRO-3/FSDP."""
    from accelerate.utils import is_peft_model

    if not is_peft_model(trainer.model):
        trainer.save_model(str(out_dir))  # all ranks: gathers sharded weights
        return
    adapter_dir = out_dir / "adapter"
    trainer.save_model(str(adapter_dir))
    if trainer.accelerator.is_main_process:
        merge_adapter(base_model, adapter_dir, out_dir)
        tokenizer.save_pretrained(str(out_dir))
    trainer.accelerator.wait_for_everyone()


def merge_adapter(base_model: str | Path, adapter_dir: Path, out_dir: Path) -> None:
    """Base + adapter -> plain model folder, kept in the base's own dtype."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_model), dtype="auto")
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out_dir))


def write_loss_curve(log_history: list[dict], out_dir: Path, extra_panel: str | None = None) -> pd.DataFrame:
    """Every logged training step as a row of loss.parquet, and loss.png (plus one more metric,
    e.g. DPO's reward margin, in a second panel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [{k: v for k, v in entry.items() if isinstance(v, int | float)}
            for entry in log_history if "loss" in entry]
    curve = pd.DataFrame(rows)
    if curve.empty:
        curve = pd.DataFrame({"step": pd.Series(dtype="int64"), "loss": pd.Series(dtype="float64")})
    curve = curve[["step", *[c for c in curve.columns if c != "step"]]]
    atomic_write_table(pa.Table.from_pandas(curve, preserve_index=False), out_dir / "loss.parquet")

    panels = ["loss"] + ([extra_panel] if extra_panel and extra_panel in curve.columns else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, column in zip(axes[0], panels, strict=True):
        ax.plot(curve["step"], curve[column], marker="o", markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel(column)
        ax.grid(alpha=0.3)
    fig.suptitle(out_dir.name)
    fig.tight_layout()
    tmp = out_dir / ".loss.png.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out_dir / "loss.png")
    return curve


def finish(trainer, out_dir: Path, summary: dict, keep_checkpoints: bool = False) -> dict:
    """Summary, then the completion marker: a reader who sees the marker sees everything.
    Then the checkpoints go (unless kept): once the marker exists nothing resumes from them.
    The main process writes; every process returns the written summary."""
    if trainer.accelerator.is_main_process:
        atomic_write_text(json.dumps(summary, indent=2, default=str), out_dir / TRAIN_SUMMARY)
        atomic_write_text(time.strftime("%Y-%m-%dT%H:%M:%S") + "\n", out_dir / COMPLETE_MARKER)
        if not keep_checkpoints:
            prune_checkpoints(out_dir)
    trainer.accelerator.wait_for_everyone()
    return json.loads((out_dir / TRAIN_SUMMARY).read_text())


def train_and_save(trainer, *, base_model: str | Path, out_dir: Path, tokenizer,
                   extra_panel: str | None = None) -> tuple[pd.DataFrame | None, float]:
    """Train (resuming from the last checkpoint), save or merge the weights, write the curve.
    Returns the curve (main process only) and the wall time of `trainer.train()`."""
    import torch

    if trainer.accelerator.is_main_process:
        drop_incomplete_checkpoints(out_dir)
    trainer.accelerator.wait_for_everyone()
    resume = last_checkpoint(out_dir)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=resume)
        seconds = time.perf_counter() - start
        save_model(trainer, base_model, out_dir, tokenizer)
    except Exception as exc:
        if disk_full(exc):  # the first error line names the cause, not torch's "file write failed"
            raise OSError(errno.ENOSPC, f"disk full (ENOSPC) while training into {out_dir}: free space and "
                          f"rerun; it resumes from the last complete checkpoint ({exc.__class__.__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
        raise
    curve = None
    if trainer.accelerator.is_main_process:
        curve = write_loss_curve(trainer.state.log_history, out_dir, extra_panel)
    return curve, seconds


def base_summary(kind: str, base_model: str | Path, out_dir: Path, cfg: TrainConfig, trainer,
                 curve: pd.DataFrame | None, seconds: float, resumed_from: str | None) -> dict:
    losses = curve["loss"].tolist() if curve is not None and "loss" in curve else []
    return {
        "kind": kind,
        "base_model": str(base_model),
        "out_dir": str(out_dir),
        "lora": cfg.lora.enabled,
        "steps": int(trainer.state.global_step),
        "epochs": round(float(trainer.state.epoch or 0), 4),
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "train_seconds": round(seconds, 2),
        "resumed_from": resumed_from,
        "num_processes": int(trainer.accelerator.num_processes),
        **cluster_summary(trainer.accelerator.num_processes, cfg.num_machines),
        "paths": {
            "model": str(out_dir),
            "adapter": str(out_dir / "adapter") if cfg.lora.enabled else None,
            "checkpoints": str(out_dir / "checkpoints"),
            "loss_parquet": str(out_dir / "loss.parquet"),
            "loss_png": str(out_dir / "loss.png"),
        },
    }

