"""`tops train grpo`: reinforcement learning with LASER's length rewards on TRL's GRPOTrainer.

TRL samples a group of `grpo.num_generations` rollouts per problem (transformers' generate on
CPU, vLLM on GPUs: colocated in the trainer or a `trl vllm-serve` server), our verifier scores
them (tops.verify: the same answer reading and per-item deadlines as the verify stage) and
tops.rewards turns verdicts and lengths into LASER's rewards. LASER-D's difficulty bucket is a
statistic of the prompt's whole group, and TRL spreads a group's rollouts over the processes:
the reward gathers (problem, verdict, length) from every process before it buckets anything. The
bucket targets are re-estimated on a monitor set of training problems before the first step and
every `grpo.monitor_every` steps, each process sampling its share and every process computing
the targets from the gathered table, so all hold the same ones.

The model folder has the layout of tops.train.common plus `grpo.png` (tokens and accuracy per
step); train_summary.json adds reward means per kind, the targets per bucket over time and the
tokens per step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from tops.artifacts import atomic_write_text, check_columns, fingerprint
from tops.config import GrpoConfig, TrainConfig, VerifyConfig
from tops.errors import UserError
from tops.rewards import (
    KINDS,
    difficulty_buckets,
    group_accuracy,
    is_repetitive,
    laser_d_targets,
    length_rewards,
    length_thresholds,
)
from tops.thinking import self_contained
from tops.train.common import (
    base_summary,
    finish,
    last_checkpoint,
    lora_config,
    open_out_dir,
    out_of_memory_guard,
    peak_memory_gib,
    progress_bars,
    run_key,
    train_and_save,
    trainer_args,
    uses_cpu,
)
from tops.train.examples import chat_messages, system_prompt_for
from tops.train.grpo_report import PLOT, plot_training, step_table
from tops.train.kernels import LONG_SEQUENCE_TOKENS, has_module, resolve_setup

TARGETS_FILE = "laser_targets.json"  # the monitor's history, so a resumed run keeps it


# ---------------------------------------------------------------- data and verdicts


def problem_rows(problems: pd.DataFrame, tokenizer, prompts: dict[str, str], system_mode: str = "none",
                 template_kwargs: dict | None = None) -> dict[str, list]:
    """TRL's conversational prompts, one per problem, with the columns the reward reads. The
    rendered generation prompt goes along so a response gets back a thinking opening its template
    wrote (tops.thinking.self_contained), as the engines store it."""
    check_columns(problems, "problems", "problems")
    if problems.empty:
        raise UserError("problems: no rows")
    system = system_prompt_for(system_mode, None, prompts)
    messages = [chat_messages(q, system) for q in problems["question"]]
    kwargs = dict(template_kwargs or {})
    return {
        "prompt": messages,
        "problem_id": problems["problem_id"].astype(str).tolist(),
        "answer": problems["answer"].astype(str).tolist(),
        "prompt_text": [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True, **kwargs)
                        for m in messages],
    }


def verdicts(responses: list[str], answers: list[str], truncated: list[bool], verify: VerifyConfig) -> list[bool | None]:
    """True / False per response, None where no answer was found (tops.verify.verify_samples)."""
    from tops.verify import verify_samples

    n = len(responses)
    if n == 0:
        return []
    frame = pd.DataFrame({"problem_id": [str(i) for i in range(n)], "question": [""] * n, "answer": answers,
                          "difficulty": [None] * n, "effort": ["none"] * n, "sample_idx": [0] * n,
                          "response": responses, "n_tokens": [0] * n,
                          "finish_reason": ["length" if t else "stop" for t in truncated]})
    checked, _ = verify_samples(frame, verify, progress=False)
    return [None if status == "no_answer" else bool(c)
            for c, status in zip(checked["correct"], checked["verify_status"], strict=True)]


def completion_text(completion) -> str:
    """A TRL completion: text, or a conversational [{"role": "assistant", "content": ...}]."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


# ---------------------------------------------------------------- the reward


@dataclass
class LengthReward:
    """The reward function TRL calls on each process's slice of the rollouts. It gathers the
    slice's (problem, verdict, length, loops) from every process, so a group split over
    processes is bucketed whole, and returns its own slice's rewards; every kind's mean over the
    whole batch goes to TRL's metrics (reward_kind/<kind>)."""

    grpo: GrpoConfig
    verify: VerifyConfig
    eos_ids: set[int] = field(default_factory=set)
    targets: dict[str, int] | None = None  # LASER-D's per bucket (set by the monitor)
    group_sizes: set[int] = field(default_factory=set)  # rollouts per problem, as the reward saw them
    completion_tokens: int = 0

    @property
    def __name__(self) -> str:  # TRL names a reward function's metrics after it
        return self.grpo.reward.replace("-", "_")

    def __call__(self, prompts, completions, completion_ids, problem_id, answer, prompt_text,
                 log_metric=None, **_) -> list[float]:
        from accelerate import PartialState
        from accelerate.utils import gather_object

        texts = [self_contained(p, completion_text(c)) for p, c in zip(prompt_text, completions, strict=True)]
        truncated = [not ids or ids[-1] not in self.eos_ids for ids in completion_ids]
        correct = verdicts(texts, list(answer), truncated, self.verify)
        local = [(pid, c, len(ids), c is False and is_repetitive(ids))
                 for pid, c, ids in zip(problem_id, correct, completion_ids, strict=True)]
        parts = gather_object([local])  # one list per process, in rank order
        offset = sum(len(part) for part in parts[:PartialState().process_index])
        rows = [row for part in parts for row in part]
        ids, verdict, n_tokens, loops = (list(column) for column in zip(*rows, strict=True))
        accuracy = group_accuracy(ids, verdict)
        self.group_sizes.update(pd.Series(ids).value_counts().tolist())
        self.completion_tokens += sum(n_tokens)
        by_kind = self.rewards_by_kind(ids, verdict, n_tokens, loops, accuracy)
        if log_metric is not None:
            for kind, rewards in by_kind.items():
                log_metric(f"reward_kind/{kind}", float(np.mean(rewards)))
            log_metric("laser/accuracy", float(np.mean([v is True for v in verdict])))
            log_metric("laser/no_answer", float(np.mean([v is None for v in verdict])))
            log_metric("laser/loops", float(np.mean(loops)))
            for bucket, target in (self.targets or {}).items():
                log_metric(f"laser/target_{bucket}", float(target))
        return by_kind[self.grpo.reward][offset:offset + len(local)]

    def rewards_by_kind(self, ids, verdict, n_tokens, loops, accuracy) -> dict[str, list[float]]:
        """Every kind that has its targets: accuracy and laser always, laser-d / -de once the
        monitor has run."""
        out = {"accuracy": length_rewards("accuracy", verdict, n_tokens, None),
               "laser": length_rewards("laser", verdict, n_tokens, self.grpo.target_length, self.grpo.alpha)}
        if self.targets is not None:
            buckets = difficulty_buckets(accuracy)
            per_row = [self.targets[buckets[i]] for i in ids]
            for kind in ("laser-d", "laser-de"):
                out[kind] = length_rewards(kind, verdict, n_tokens, per_row, self.grpo.alpha, repetitive=loops)
        if self.grpo.reward not in out:
            raise RuntimeError(f"reward {self.grpo.reward}: no targets yet (the monitor runs before the first step)")
        return out


# ---------------------------------------------------------------- the monitor (LASER-D)


@dataclass
class Monitor:
    """Training problems re-sampled every `every` steps to re-estimate the bucket targets."""

    rows: list[dict]  # problem rows as problem_rows gives them, one dict per problem
    rollouts: int
    every: int
    thresholds: list[int]
    expected_correct: int
    next_step: int = 0
    history: list[dict] = field(default_factory=list)

    def share(self, rank: int, processes: int) -> list[dict]:
        """This process's problems: as many on every process (whole groups each), so collective
        generation (vLLM server mode) and the gather line up."""
        rows = self.rows
        if len(rows) < processes:
            rows = [rows[i % len(rows)] for i in range(processes)]
        rows = rows[: len(rows) - len(rows) % processes]
        return rows[rank::processes]

    def estimate(self, table: pd.DataFrame, step: int) -> dict[str, int]:
        """Buckets from each problem's monitor accuracy, then the targets (tops.rewards)."""
        buckets = difficulty_buckets(group_accuracy(table["problem_id"].tolist(), table["correct"].tolist()))
        table = table.assign(bucket=table["problem_id"].map(buckets))
        targets = laser_d_targets(table, self.rollouts, self.thresholds, self.expected_correct)
        counts = pd.Series(buckets).value_counts()
        self.history.append({
            "step": step, **targets, "monitor_rollouts": len(table),
            "monitor_accuracy": round(float((table["correct"] == True).mean()), 4),  # noqa: E712
            "monitor_mean_tokens": round(float(table["n_tokens"].mean()), 2),
            "problems_per_bucket": {b: int(counts.get(b, 0)) for b in ("easy", "medium", "hard")},
        })
        self.next_step = step + self.every
        return targets


def monitor_rows(rows: dict[str, list], n: int, seed: int) -> list[dict]:
    """`n` training problems drawn with the run's seed (all of them when there are fewer)."""
    records = [dict(zip(rows, values, strict=True)) for values in zip(*rows.values(), strict=True)]
    order = np.random.default_rng(seed).permutation(len(records))[:n]
    return [records[i] for i in sorted(order)]


# ---------------------------------------------------------------- the trainer


def _trainer_class():
    from trl import GRPOTrainer

    class LaserGRPOTrainer(GRPOTrainer):
        """GRPOTrainer that runs the LASER-D monitor before generating when one is due."""

        laser_reward: LengthReward
        monitor: Monitor | None = None

        def _generate_and_score_completions(self, inputs):
            if self.model.training and self.monitor is not None and self.state.global_step >= self.monitor.next_step:
                self.run_monitor()
            return super()._generate_and_score_completions(inputs)

        def run_monitor(self) -> None:
            """Sample the monitor set with the current policy through TRL's own generation path
            (transformers or vLLM), score it, gather it, and set the reward's targets."""
            from accelerate import PartialState
            from accelerate.utils import gather_object

            state, monitor = PartialState(), self.monitor
            share = monitor.share(state.process_index, state.num_processes)
            per_chunk = max(1, self.args.generation_batch_size // (state.num_processes * monitor.rollouts))
            local = []
            for start in range(0, len(share), per_chunk):
                chunk = share[start:start + per_chunk]
                prompts = [row["prompt"] for row in chunk for _ in range(monitor.rollouts)]
                prompt_ids, _, fields = self._tokenize_prompts(prompts)
                completion_ids, _ = self._generate_single_turn(prompt_ids, None, fields, monitor.rollouts)
                texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
                rows = [row for row in chunk for _ in range(monitor.rollouts)]
                responses = [self_contained(r["prompt_text"], t) for r, t in zip(rows, texts, strict=True)]
                truncated = [not ids or ids[-1] not in self.laser_reward.eos_ids for ids in completion_ids]
                correct = verdicts(responses, [r["answer"] for r in rows], truncated, self.laser_reward.verify)
                local += [{"problem_id": r["problem_id"], "correct": c, "n_tokens": len(ids)}
                          for r, c, ids in zip(rows, correct, completion_ids, strict=True)]
            table = pd.DataFrame(gather_object(local))
            self.laser_reward.targets = monitor.estimate(table, int(self.state.global_step))
            if self.accelerator.is_main_process:
                atomic_write_text(json.dumps(monitor.history, indent=1), Path(self.args.output_dir).parent / TARGETS_FILE)

    return LaserGRPOTrainer


def rollout_backend(grpo: GrpoConfig) -> str:
    """transformers, vllm-colocate or vllm-server; `auto` takes vLLM only on GPUs."""
    if grpo.rollouts == "transformers" or (grpo.rollouts == "auto" and (uses_cpu() or not has_module("vllm"))):
        return "transformers"
    return f"vllm-{grpo.vllm_mode}"


def steps_per_generation(cfg: TrainConfig, grpo: GrpoConfig) -> int:
    """Micro-batches per optimizer step: one step trains on prompts_per_step whole groups."""
    rollouts = grpo.prompts_per_step * grpo.num_generations
    per_micro = cfg.batch_size * cfg.num_processes
    if rollouts % per_micro:
        raise UserError(f"grpo: prompts_per_step x num_generations ({rollouts} rollouts a step) must be a multiple "
                        f"of train.batch_size x train.num_processes ({per_micro})")
    return rollouts // per_micro


def build_grpo_trainer(problems: pd.DataFrame, base_model: str | Path, out_dir: Path, cfg: TrainConfig,
                       prompts: dict[str, str], grpo: GrpoConfig, verify: VerifyConfig,
                       template_kwargs: dict | None = None, progress: bool = True, callbacks: list | None = None):
    """(trainer, None) or (None, the finished run's summary)."""
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig

    from tops.train.sft import load_tokenizer

    tokenizer = load_tokenizer(base_model)
    rows = problem_rows(problems, tokenizer, prompts, cfg.system_prompt, template_kwargs)
    if len(rows["prompt"]) < grpo.prompts_per_step:
        raise UserError(f"problems: {len(rows['prompt'])} rows, fewer than grpo.prompts_per_step "
                        f"({grpo.prompts_per_step}): no full step")
    key = run_key("grpo", base_model, cfg, fingerprint([rows["prompt"], rows["answer"]]),
                  extra={"grpo": grpo.model_dump(mode="json"), "verify": verify.model_dump(mode="json"),
                         "template_kwargs": template_kwargs or {}})
    done = open_out_dir(out_dir, key)
    if done is not None:
        return None, done

    steps = steps_per_generation(cfg, grpo)
    setup = resolve_setup(cfg)
    long = grpo.max_completion_length >= LONG_SEQUENCE_TOKENS
    setup = replace(setup, batching="padded", max_tokens_per_batch=None, liger_kernels=False,
                    attn_implementation=None if setup.attn_implementation == "flex_attention" else setup.attn_implementation,
                    gradient_checkpointing=cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else long)
    backend = rollout_backend(grpo)
    vllm = {} if backend == "transformers" else {
        "use_vllm": True, "vllm_mode": grpo.vllm_mode, "vllm_gpu_memory_utilization": grpo.vllm_gpu_memory_utilization,
        **({"vllm_server_base_url": grpo.vllm_server_base_url} if grpo.vllm_server_base_url else {})}
    args = trainer_args(GRPOConfig, cfg.model_copy(update={"grad_accum": steps, "logging_steps": grpo.logging_steps}),
                        out_dir, learning_rate=grpo.learning_rate, epochs=cfg.epochs, progress=progress, setup=setup,
                        num_generations=grpo.num_generations, max_completion_length=grpo.max_completion_length,
                        temperature=grpo.temperature, beta=grpo.beta, epsilon=grpo.epsilon,
                        epsilon_high=grpo.epsilon_high, loss_type=grpo.loss_type, scale_rewards=grpo.scale_rewards,
                        steps_per_generation=steps, chat_template_kwargs=dict(template_kwargs or {}),
                        log_completions=False, **vllm)
    reward = LengthReward(grpo, verify)
    trainer = _trainer_class()(model=str(base_model), reward_funcs=[reward], args=args,
                               train_dataset=Dataset.from_dict(rows), processing_class=tokenizer,
                               peft_config=lora_config(cfg), callbacks=callbacks)
    reward.eos_ids = set(trainer.eos_token_ids)
    trainer.laser_reward = reward
    if grpo.reward in ("laser-d", "laser-de"):
        monitor = Monitor(monitor_rows(rows, grpo.monitor_problems, cfg.seed), grpo.rollouts_per_monitor_problem,
                          grpo.monitor_every, length_thresholds(grpo.target_lower, grpo.max_completion_length,
                                                                grpo.target_interval), grpo.expected_correct)
        monitor.history = resumed_history(out_dir)
        trainer.monitor = monitor
    trainer.setup, trainer.backend = setup, backend
    if not progress:
        trainer.remove_callback(PrinterCallback)
    return trainer, None


def resumed_history(out_dir: Path) -> list[dict]:
    """The monitor's history up to the checkpoint a rerun resumes from (nothing for a fresh run)."""
    checkpoint, path = last_checkpoint(out_dir), out_dir / TARGETS_FILE
    if checkpoint is None or not path.exists():
        return []
    step = int(Path(checkpoint).name.rsplit("-", 1)[-1])
    return [entry for entry in json.loads(path.read_text()) if entry["step"] < step]


def train_grpo(problems: pd.DataFrame, base_model: str | Path, out_dir: str | Path, cfg: TrainConfig,
               prompts: dict[str, str], *, grpo: GrpoConfig, verify: VerifyConfig,
               template_kwargs: dict | None = None, progress: bool = True, callbacks: list | None = None) -> dict:
    """GRPO-train `base_model` on problems (problem_id, question, answer) into `out_dir`, with the
    resume and completion rules of train_sft."""
    with progress_bars(progress), out_of_memory_guard(Path(out_dir)):
        return _train_grpo(problems, base_model, Path(out_dir), cfg, prompts, grpo, verify, template_kwargs,
                           progress, callbacks)


def _train_grpo(problems, base_model, out_dir: Path, cfg, prompts, grpo, verify, template_kwargs, progress,
                callbacks) -> dict:
    from accelerate.utils import gather_object

    trainer, done = build_grpo_trainer(problems, base_model, out_dir, cfg, prompts, grpo, verify, template_kwargs,
                                       progress, callbacks)
    if done is not None:
        return done
    resumed_from = last_checkpoint(out_dir)
    curve, seconds = train_and_save(trainer, base_model=base_model, out_dir=out_dir,
                                    tokenizer=trainer.processing_class, extra_panel="completions/mean_length")
    reward, monitor = trainer.laser_reward, trainer.monitor
    # What every process saw: the same targets, and whole groups in the reward.
    seen = gather_object([{"targets": monitor.history if monitor else [], "group_sizes": sorted(reward.group_sizes)}])
    summary = base_summary("grpo", base_model, out_dir, cfg, trainer, curve, seconds, resumed_from)
    steps = step_table(trainer.state.log_history)
    tokens = reward.completion_tokens  # all processes' rollouts (the reward sees them gathered)
    summary.update({
        "problems": len(problems),
        "system_prompt": cfg.system_prompt,
        "reward": grpo.reward,
        "grpo": grpo.model_dump(mode="json"),
        "rollouts": trainer.backend,
        "learning_rate": grpo.learning_rate,
        "setup": trainer.setup.describe(),
        "steps_per_generation": trainer.args.steps_per_generation,
        "reward_means": {kind: round(float(steps[f"reward_kind/{kind}"].mean()), 4)
                         for kind in KINDS if f"reward_kind/{kind}" in steps},
        "targets": monitor.history if monitor else [],
        "targets_by_process": [entry["targets"] for entry in seen],
        "group_sizes_by_process": [entry["group_sizes"] for entry in seen],
        "tokens_per_step": steps["completions/mean_length"].round(2).tolist() if "completions/mean_length" in steps else [],
        "accuracy_per_step": steps["laser/accuracy"].round(4).tolist() if "laser/accuracy" in steps else [],
        "step_log": [{k: v for k, v in row.items() if pd.notna(v)} for row in steps.to_dict("records")],
        "rollout_tokens": tokens,
        "rollout_tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
        "peak_memory_gib": peak_memory_gib(),
    })
    if trainer.accelerator.is_main_process:
        plot_training(summary, out_dir / PLOT, title=out_dir.name)
    summary["paths"]["grpo_png"] = str(out_dir / PLOT)
    return finish(trainer, out_dir, summary, keep_checkpoints=cfg.keep_checkpoints)
