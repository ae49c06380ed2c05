"""Typed configuration: one pydantic model per stage, all with extra="forbid".

A YAML file from `configs/` plus `--set a.b=value` overrides is validated in full before any
work starts; the first problem becomes one UserError line naming the field (exit code 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from tops import answers
from tops.errors import UserError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------- run, model, engine


class RunConfig(Strict):
    name: str = "demo"
    root: Path = Path("data/runs")
    seed: int = 0

    @field_validator("name")
    @classmethod
    def _a_name_not_a_path(cls, name: str) -> str:
        """The run folder is root/name and a flow deletes inside it: a name cannot leave root."""
        if not name or name in (".", "..") or len(name) > 128:
            raise ValueError("must be a folder name of 1 to 128 characters, not '.' or '..'")
        if any(char in name for char in "/\\\0") or Path(name).is_absolute():
            raise ValueError("must be a plain folder name (no '/', '\\' or absolute path)")
        if not name.isprintable():
            raise ValueError("must be printable (no control characters)")
        return name

    @property
    def dir(self) -> Path:
        return self.root / self.name


class ModelConfig(Strict):
    # An alias ("smollm2-135m-instruct", "tiny"), a local folder, or a Hub id.
    base: str = "smollm2-135m-instruct"


class EngineConfig(Strict):
    kind: Literal["vllm", "hf", "openai"] = "vllm"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    seed: int = 0
    max_model_len: int | None = Field(2048, ge=64)
    # vLLM
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    enforce_eager: bool = True
    cpu_kv_cache_gb: float = Field(2.0, gt=0)
    enable_prefix_caching: bool = True
    # transformers fallback
    batch_size: int = Field(32, ge=1)
    # OpenAI-compatible HTTP (vllm serve, a teacher API)
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    served_model: str | None = None
    tokenizer: str | None = None
    concurrency: int = Field(8, ge=1)
    # The server is vLLM: ask for token ids (exact counts) and allow continuing partial answers.
    vllm_extensions: bool = True
    request_timeout_s: float = Field(600, gt=0)
    # Engine processes (tops/gpus.py): on GPUs, gpus / tensor_parallel_size of them, each pinned to
    # its own GPUs with CUDA_VISIBLE_DEVICES, sampling a disjoint shard of the problems.
    gpus: int | None = Field(None, ge=0)  # GPUs of this node to use; None: the machine's count
    gpu_memory_gib: float | None = Field(None, gt=0)  # one GPU, for the memory estimate; None: the machine's
    # How many engine processes: None = as many as the GPUs allow (one on a CPU); on a CPU, set
    # it to run several engine processes over the cores.
    data_parallel_size: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _openai_needs_url(self) -> EngineConfig:
        if self.kind == "openai" and not self.base_url:
            raise ValueError("engine.base_url is required when engine.kind is 'openai'")
        return self


class SamplingConfig(Strict):
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(512, ge=1)
    stop: list[str] = Field(default_factory=list)


# ---------------------------------------------------------------- efforts

DEFAULT_EFFORT_PROMPTS: dict[str, str] = {
    "low": (
        "You have extremely limited time to think and respond to the user's query. Every "
        "additional second of processing and reasoning incurs a significant resource cost. "
        "Respond with minimal reasoning and give the final answer in \\boxed{}."
    ),
    "medium": (
        "You have sufficient time to think and respond to the user's query, allowing for a "
        "more thoughtful and in-depth answer. However, be aware that the longer you take to "
        "reason, the higher the associated resource costs. Reason step by step and give the "
        "final answer in \\boxed{}."
    ),
    "high": (
        "You have unlimited time to think and respond to the user's query. There is no need "
        "to worry about reasoning time or associated costs. Reason step by step, verify your "
        "work, and give the final answer in \\boxed{}."
    ),
    "none": "Please reason step by step, and put your final answer within \\boxed{}.",
}
EFFORT_ORDER = ("low", "medium", "high")


class EffortsConfig(Strict):
    prompts: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_EFFORT_PROMPTS))
    # Effort name -> chat-template arguments, e.g. {low: {enable_thinking: false}} for Qwen3;
    # an effort is then its prompt ("" for no system message) plus these, plus any
    # generate.depth control (budget forcing) for its depth.
    template_kwargs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # The base model follows these efforts as it is (gpt-oss "Reasoning: low", Qwen3's thinking
    # switch): the flow trains no tag model and samples the base model instead (and makes seed
    # data only for select.add_seed_low).
    native: bool = False

    @field_validator("prompts")
    @classmethod
    def _needs_none(cls, prompts: dict[str, str]) -> dict[str, str]:
        merged = {**DEFAULT_EFFORT_PROMPTS, **prompts}
        return merged


# ---------------------------------------------------------------- problem sources


class ArithLevel(Strict):
    # Digits of every operand, or one entry per operand (e.g. [2, 1] for "47 + 5").
    digits: Annotated[int, Field(ge=1, le=12)] | list[Annotated[int, Field(ge=1, le=12)]]
    operands: int = Field(2, ge=2, le=6)
    ops: list[Literal["+", "-", "*"]] = Field(default_factory=lambda: ["+"])

    @model_validator(mode="after")
    def _digits_per_operand(self) -> ArithLevel:
        if isinstance(self.digits, list) and len(self.digits) != self.operands:
            raise ValueError(f"digits lists {len(self.digits)} operands but operands is {self.operands}")
        return self

    @property
    def digits_per_operand(self) -> list[int]:
        return self.digits if isinstance(self.digits, list) else [self.digits] * self.operands


def _default_levels() -> dict[str, ArithLevel]:
    return {
        "easy": ArithLevel(digits=1),
        "medium": ArithLevel(digits=2),
        "hard": ArithLevel(digits=3),
    }


class ArithSource(Strict):
    kind: Literal["arith"] = "arith"
    levels: dict[str, ArithLevel] = Field(default_factory=_default_levels)


class ColumnMap(Strict):
    question: str = "question"
    answer: str = "answer"
    problem_id: str | None = None
    difficulty: str | None = None


class HFSource(Strict):
    kind: Literal["hf"] = "hf"
    path: str
    name: str | None = None
    split: str = "train"
    columns: ColumnMap = Field(default_factory=ColumnMap)
    answer_format: Literal["auto", "gsm8k", "boxed", "plain"] = "auto"


class FileSource(Strict):
    kind: Literal["file"] = "file"
    path: Path
    columns: ColumnMap = Field(default_factory=ColumnMap)
    answer_format: Literal["auto", "gsm8k", "boxed", "plain"] = "auto"


def _source_kind(value: Any) -> str | None:
    """`kind` picks the source class; a source without one is the default arith world."""
    if isinstance(value, dict):
        return value.get("kind", "arith")
    return getattr(value, "kind", None)


SourceConfig = Annotated[
    Annotated[ArithSource, Tag("arith")] | Annotated[HFSource, Tag("hf")] | Annotated[FileSource, Tag("file")],
    Discriminator(_source_kind),
]


class ProblemsConfig(Strict):
    source: SourceConfig = Field(default_factory=ArithSource)
    n: int = Field(48, ge=1)  # problems drawn for one `tops problems` call
    seed: int = 0


# ---------------------------------------------------------------- stages


class _DepthControlBase(Strict):
    # End-of-thinking marker. None: the model has no thinking block and its end of sequence
    # ends the thinking (plain instruct models). See tops/depth.py.
    delimiter: str | None = "</think>"
    wait: str = Field("Wait", min_length=1)  # the string appended to make the model go on


class BudgetForcingConfig(_DepthControlBase):
    """s1 budget forcing: at least `min_continuations` "Wait"s when the model tries to end its
    thinking; at `max_thinking_tokens` the thinking is closed with delimiter + answer_prefix."""

    kind: Literal["budget"] = "budget"
    min_continuations: int = Field(0, ge=0)
    max_thinking_tokens: int | None = Field(None, ge=1)
    answer_prefix: str = "\n\nFinal Answer:"

    @model_validator(mode="after")
    def _does_something(self) -> BudgetForcingConfig:
        if self.min_continuations == 0 and self.max_thinking_tokens is None:
            raise ValueError("budget forcing needs min_continuations > 0 or max_thinking_tokens")
        if self.max_thinking_tokens is not None and not (self.delimiter or self.answer_prefix):
            raise ValueError("closing the thinking at max_thinking_tokens needs a delimiter or an answer_prefix")
        return self


class AlphaOneConfig(_DepthControlBase):
    """AlphaOne: "Wait" after paragraph breaks with probability 1 - t/(alpha*n_think) before the
    alpha moment; after it, a "Wait" the model writes becomes delimiter + answer_prefix."""

    kind: Literal["alphaone"] = "alphaone"
    alpha: float = Field(1.4, gt=0)
    n_think: int | None = Field(None, ge=1)  # None: mean thinking tokens of a pilot run
    paragraph_breaks: list[str] = Field(default_factory=lambda: ["\n\n"], min_length=1)
    wait_words: list[str] = Field(default_factory=lambda: ["Wait"], min_length=1)  # replaced after it
    answer_prefix: str = ""
    seed: int = 0  # the Bernoulli draws

    @model_validator(mode="after")
    def _can_close(self) -> AlphaOneConfig:
        if not (self.delimiter or self.answer_prefix):
            raise ValueError("alphaone needs a delimiter or an answer_prefix to end the thinking with")
        if not all(self.paragraph_breaks) or not all(self.wait_words):
            raise ValueError("paragraph_breaks and wait_words must be non-empty strings")
        if self.delimiter in self.paragraph_breaks or self.delimiter in self.wait_words:
            raise ValueError("the delimiter cannot also be a paragraph break or a wait word")
        return self


DepthControlConfig = Annotated[BudgetForcingConfig | AlphaOneConfig, Field(discriminator="kind")]


class GenerateConfig(Strict):
    efforts: list[str] = Field(default_factory=lambda: list(EFFORT_ORDER))
    n_samples: int = Field(1, ge=1)
    # Effort name -> samples of that effort, instead of n_samples. {low: 4}: the short effort
    # is cheap to sample again, and select.min_effort_accuracy then tells skill from luck.
    n_samples_by_effort: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)
    shard_size: int = Field(256, ge=1)  # (problem, effort) prompts per resumable shard
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    # Effort name -> depth control applied when sampling that effort (tops/depth.py).
    depth: dict[str, DepthControlConfig] = Field(default_factory=dict)

    def samples_for(self, effort: str) -> int:
        return self.n_samples_by_effort.get(effort, self.n_samples)


class VerifyConfig(Strict):
    timeout_s: float = Field(5.0, gt=0)
    workers: int | None = Field(None, ge=1)  # None: all cores
    second_checker: Literal["none", "numeric"] = "none"
    answer_phrases: bool = True  # fall back to "the answer is ..." / "Final Answer:" when no \boxed{}


class LaserConfig(Strict):
    alpha: float = Field(0.5, ge=0)
    length_step: int = Field(64, ge=1)  # candidate target lengths (paper: 1024 for long CoT)
    expected_correct: dict[str, int] = Field(
        default_factory=lambda: {"easy": 5, "medium": 2, "hard": 1})

    @field_validator("expected_correct")
    @classmethod
    def _one_per_bucket(cls, expected: dict[str, int]) -> dict[str, int]:
        if set(expected) != {"easy", "medium", "hard"} or min(expected.values()) < 1:
            raise ValueError("needs easy, medium and hard, each at least 1")
        return expected


class SelectConfig(Strict):
    policy: Literal["shortest", "random", "laser-d"] = "shortest"
    seed: int = 0
    # Only efforts that solved at least this share of their samples of a problem supply
    # candidates (None: every correct response does). Pair with generate.n_samples_by_effort,
    # e.g. {low: 4} and 0.75: a direct answer must be right 3 times in 4, not once by luck.
    min_effort_accuracy: float | None = Field(None, gt=0, le=1)
    add_seed_low: bool = False
    laser: LaserConfig = Field(default_factory=LaserConfig)


class PairsConfig(Strict):
    add_short_incorrect: bool = True


class MaskConfig(Strict):
    enabled: bool = True  # False: the paper's "train on all tokens" ablation
    mode: Literal["rounds", "judge"] = "rounds"
    step_split: Literal["line", "paragraph"] = "line"
    # A round ends where one of these matches; the named group `answer` is the round's answer.
    # The defaults are tops.answers' markers (a box; "the answer is" / "Final Answer:").
    answer_patterns: list[str] = Field(default_factory=lambda: [
        answers.BOXED_ANSWER_PATTERN, answers.PHRASE_ANSWER_PATTERN])
    # These end a round only when a reflection cue follows: otherwise every "= N" of the
    # working would end a round and correct intermediate results would be masked. Possessive
    # quantifiers (*+) keep them from backtracking at each "= N".
    weak_answer_patterns: list[str] = Field(default_factory=lambda: [
        r"=\s*+\$?(?P<answer>-?\d[\d,]*+(?:\.\d+)?+)\$?",
    ])
    # A reflection cue: the words that open a re-check after a (possibly wrong) answer. The
    # reflection clause it starts is kept even when the round it opens is masked.
    reflection_pattern: str = (
        r"(?i:(?:but\s+)?(?:wait|hmm+|hold\s+on|oops|actually|no|on\s+second\s+thought"
        r"|let\s+me\s+(?:re|double|check|verify)\w*|let's\s+(?:re|double|check|verify)\w*"
        r"|that(?:'s|\s+is)\s+(?:wrong|incorrect|not\s+right))\b[^\d=\n.:;!?]{0,80}[.:;!?,]?)"
    )
    judge_prompt: str = (  # placeholders: {question} {answer} {steps}
        "You check a worked solution to a math problem for errors.\n\n"
        "Problem:\n{question}\n\nCorrect final answer: {answer}\n\n"
        "The solution, split into numbered steps and grouped into reasoning rounds (a round ends "
        "with an answer):\n{steps}\n\n"
        "For each round, find its first incorrect step (a wrong calculation, fact or claim). A step "
        "that only notices or corrects an earlier mistake is not incorrect. Reply with one line per "
        "round that has an error, like 'Round 1: Step 3', or with 'none' if no step is incorrect. "
        "Do not explain."
    )
    judge_sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=0.0, max_tokens=128))
    # The CLI builds the judge from these; None: the run's own engine / model.
    judge_engine: EngineConfig | None = None
    judge_model: str | None = None

    @field_validator("answer_patterns", "weak_answer_patterns")
    @classmethod
    def _patterns_capture_answer(cls, patterns: list[str]) -> list[str]:
        import re

        for pattern in patterns:
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regex {pattern!r}: {exc}") from None
            if "answer" not in compiled.groupindex:
                raise ValueError(f"regex {pattern!r} needs a named group (?P<answer>...)")
        return patterns

    @field_validator("reflection_pattern")
    @classmethod
    def _pattern_compiles(cls, pattern: str) -> str:
        import re

        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regex {pattern!r}: {exc}") from None
        return pattern

    @field_validator("judge_prompt")
    @classmethod
    def _prompt_has_steps(cls, prompt: str) -> str:
        if "{steps}" not in prompt:
            raise ValueError("the judge prompt needs the placeholder {steps}")
        return prompt


class LoraConfig(Strict):
    enabled: bool = True
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"


class TrainConfig(Strict):
    system_prompt: str = "none"  # an effort name, or "effort" to use each row's own effort
    learning_rate: float = Field(1e-5, gt=0)
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(1024, ge=16)
    # Keep padding a small share of the compute (see tops/train/batching.py). False: plain
    # padded batches in random order, whatever `batching` says.
    packing: bool = True
    # How micro-batches are laid out. "auto": padding_free_flash (flash-attn varlen) when
    # flash-attn is installed, else length_grouped; padding_free_flex and per_sequence are
    # opt-in (slow on an H200, see tops/train/kernels.py); the train summary names the path.
    batching: Literal["auto", "padding_free_flash", "padding_free_flex", "per_sequence",
                      "length_grouped", "padded"] = "auto"
    # Token budget of one micro-batch on one process: positions computed (rows x longest when
    # padded, the sum of lengths when padding-free). None: `batch_size` examples per micro-batch.
    # With a budget, a micro-batch holds as many examples as fit and `batch_size` is not used.
    max_tokens_per_batch: int | None = Field(None, ge=16)
    bf16: bool = False
    lora: LoraConfig = Field(default_factory=LoraConfig)
    beta: float = Field(0.1, gt=0)  # DPO
    num_processes: int = Field(1, ge=1)
    accelerate_config: Path | None = None
    logging_steps: int = Field(5, ge=1)
    save_steps: int = Field(50, ge=1)
    # Trainer checkpoints (weights + optimizer state, ~3x the model) only serve a resume; a
    # finished run deletes them unless this is True.
    keep_checkpoints: bool = False
    seed: int = 0
    max_steps: int | None = Field(None, ge=1)  # stop early (smoke runs, benchmarks)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    # Saves activation memory on long sequences for ~30% more compute. None: on when max_length
    # >= LONG_SEQUENCE_TOKENS (tops/train/kernels.py).
    gradient_checkpointing: bool | None = None
    # Weights while training ("auto": as stored). None: with bf16, bfloat16 where the optimizer
    # keeps its own float32 master copy (DeepSpeed ZeRO) or the weights are frozen (LoRA); a
    # plain or FSDP AdamW updates the weights themselves (float32: bf16 rounds away lr-1e-5 steps).
    model_dtype: Literal["float32", "bfloat16", "auto"] | None = None
    attn_implementation: str | None = None  # None: follows `batching` (e.g. flash_attention_2)
    # Liger's Triton kernels (RMSNorm, SwiGLU, RoPE) on CUDA when liger-kernel is installed:
    # opt-in (True), since the H200 runs with it on were slow; TRL's chunked LM head already
    # keeps the logits off memory.
    liger_kernels: bool | None = None
    torch_compile: bool = False  # torch.compile the model (recompiles per new shape)
    # SFT: TRL's chunked log-prob LM head never builds the full logits (memory on GPUs, large
    # vocabularies) but runs the head in float32: on CPU it took ~1.5 s of a 4 s SmolLM2 step.
    # None: on with CUDA, off on CPU (the model's own loss under bf16 autocast).
    fused_lm_head: bool | None = None
    # DPO: None = learning_rate / 20 (the paper: SFT 1e-5, Iter-DPO 5e-7) and `epochs`.
    dpo_learning_rate: float | None = Field(None, gt=0)
    dpo_epochs: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _budget_fits_one_example(self):
        if self.max_tokens_per_batch is not None and self.max_tokens_per_batch < self.max_length:
            raise ValueError(f"max_tokens_per_batch ({self.max_tokens_per_batch}) must be at least "
                             f"max_length ({self.max_length}): one example has to fit in a micro-batch")
        return self


class BenchmarkConfig(Strict):
    """A benchmark preset (tops/benchmarks.py): the Hub dataset, or `path`, a local file with
    the same columns."""

    name: Literal["gsm8k", "math500", "aime24", "aime25"]
    path: Path | None = None
    n: int | None = Field(None, ge=1)  # a random subset of this many problems (None: all)


class EvalConfig(Strict):
    n_problems: int = Field(60, ge=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    efforts: list[str] = Field(default_factory=lambda: ["none"])
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(temperature=0.7))
    # Held-out problems from benchmarks (names or {name, path, n}) or from another problems
    # source, instead of n_problems drawn from problems.source.
    benchmarks: list[BenchmarkConfig] = Field(default_factory=list)
    source: SourceConfig | None = None
    pass_k: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)  # []: k = samples per problem
    token_budgets: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)  # []: quarters of the longest

    @field_validator("benchmarks", mode="before")
    @classmethod
    def _names_are_presets(cls, value: Any) -> Any:
        return [{"name": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _one_held_out_source(self) -> EvalConfig:
        names = [b.name for b in self.benchmarks]
        if len(set(names)) != len(names):
            raise ValueError("eval.benchmarks: a benchmark is listed twice")
        if self.benchmarks and self.source is not None:
            raise ValueError("eval.benchmarks and eval.source are exclusive: held-out problems come from one")
        if any(k > len(self.seeds) for k in self.pass_k):
            raise ValueError(f"eval.pass_k: k cannot exceed the {len(self.seeds)} samples per problem (eval.seeds)")
        return self


class SeedConfig(Strict):
    # "arith": the arith domain's programmatic teacher; anything else: a model (alias, folder or
    # Hub id) answering under the three effort prompts through `seed.engine`.
    teacher: str = "arith"
    engine: EngineConfig = Field(default_factory=EngineConfig)
    samples_per_effort: int = Field(1, ge=1)
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(max_tokens=4096))
    min_gap_tokens: int = Field(300, ge=0)  # paper: 300 tokens between neighbouring efforts


TRAIN_STAGES = ("tag", "tops", "random", "iter_sft", "iter_dpo")


class FlowConfig(Strict):
    seed_problems: int = Field(60, ge=1)
    # The problems the tag model samples at every effort. None: problems.n, the same count a
    # standalone `tops problems` draws (see flow_problem_counts).
    train_problems: int | None = Field(None, ge=1)
    iter_problems: int = Field(60, ge=1)
    iterations: int = Field(1, ge=0)
    iter_method: Literal["sft", "dpo"] = "sft"
    iter_samples: int = Field(4, ge=1)  # paper: 8 responses per problem
    random_baseline: bool = True
    # Per-stage training overrides on top of `train` (paper: tag lr 1e-5 x3 epochs, TOPS 1e-5
    # x2, Iter-SFT 1e-6 x1, Iter-DPO 5e-7 x3), keyed by TRAIN_STAGES.
    train_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    runner: Literal["thread", "ray"] = "thread"
    ray_address: str | None = None  # None: start a local Ray instance
    generate_shards: int = Field(1, ge=1)  # generation split into this many mapped tasks
    gpus_per_shard: float = Field(0, ge=0)
    retries: int = Field(1, ge=0)
    retry_delay_s: float = Field(5, ge=0)
    # True: a run of a folder whose loop already finished is the next round of one campaign
    # (tops/rounds.py): one more self-improvement iteration on problems no earlier round used, from
    # the latest model. False: a rerun reuses every finished stage. Deployments (`tops serve`,
    # prefect.yaml) set it.
    continue_rounds: bool = False

    @field_validator("train_overrides")
    @classmethod
    def _known_stages(cls, overrides: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for stage in overrides:
            if stage not in TRAIN_STAGES:
                raise ValueError(f"unknown training stage '{stage}' (known: {', '.join(TRAIN_STAGES)})")
        return overrides


class ExportConfig(Strict):
    """Publishing as the run's last stage. No token here: it comes from HF_TOKEN or `hf auth login`."""

    repo_id: str | None = None  # ORG/NAME of the Hub dataset repo; None: no export stage
    private: bool = True  # visibility of a newly created repo (an existing repo keeps its own)
    datasets: bool = True  # samples / sft / dpo / eval configs + dataset card with the rounds' history
    model: bool = False  # also the latest model, to the model repo of the same id
    license: str = Field("apache-2.0", min_length=1)

    @field_validator("repo_id")
    @classmethod
    def _hub_repo_id(cls, repo_id: str | None) -> str | None:
        if repo_id is None:
            return None
        from tops.hub.collect import check_repo_id

        try:
            return check_repo_id(repo_id)
        except UserError as exc:
            raise ValueError(str(exc).removeprefix("--repo-id ")) from None

    @model_validator(mode="after")
    def _pushes_something(self) -> ExportConfig:
        if self.repo_id and not (self.datasets or self.model):
            raise ValueError("export.repo_id is set but neither datasets nor model is pushed")
        return self


class TopsConfig(Strict):
    run: RunConfig = Field(default_factory=RunConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    efforts: EffortsConfig = Field(default_factory=EffortsConfig)
    problems: ProblemsConfig = Field(default_factory=ProblemsConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    mask: MaskConfig = Field(default_factory=MaskConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    seed: SeedConfig = Field(default_factory=SeedConfig)
    flow: FlowConfig = Field(default_factory=FlowConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)

    @model_validator(mode="after")
    def _efforts_known(self) -> TopsConfig:
        known = set(self.efforts.prompts)
        for where, names in (("generate.efforts", self.generate.efforts),
                             ("eval.efforts", self.eval.efforts)):
            for name in names:
                if name not in known:
                    raise ValueError(f"{where}: unknown effort '{name}' (known: {', '.join(sorted(known))})")
        if self.train.system_prompt not in known | {"effort"}:
            raise ValueError(f"train.system_prompt: unknown effort '{self.train.system_prompt}'")
        for where, names in (("generate.depth", self.generate.depth),
                             ("generate.n_samples_by_effort", self.generate.n_samples_by_effort)):
            for name in names:
                if name not in known:
                    raise ValueError(f"{where}: unknown effort '{name}' (known: {', '.join(sorted(known))})")
        efforts = self.efforts
        for name in efforts.template_kwargs:
            if name not in known:
                raise ValueError(f"efforts.template_kwargs: unknown effort '{name}' (known: {', '.join(sorted(known))})")
            if name in ("none", self.train.system_prompt):
                raise ValueError(f"efforts.template_kwargs.{name}: training renders this effort's prompt "
                                 "without template arguments; give it a system prompt instead")
        if efforts.template_kwargs and not efforts.native:
            raise ValueError("efforts.template_kwargs needs efforts.native: true (a tag model learns "
                             "efforts from system prompts only)")
        for stage in self.flow.train_overrides:
            try:
                self.train_config(stage)
            except ValidationError as exc:
                err = exc.errors()[0]
                loc = ".".join(str(p) for p in err["loc"])
                raise ValueError(f"flow.train_overrides.{stage}.{loc}: {err['msg']}") from None
        return self

    def train_config(self, stage: str) -> TrainConfig:
        """`train` with the stage's overrides from flow.train_overrides applied."""
        merged = {**self.train.model_dump(), **self.flow.train_overrides.get(stage, {})}
        return TrainConfig.model_validate(merged)


def flow_problem_counts(cfg: TopsConfig) -> dict[str, int]:
    """Problems the flow draws per split, each exactly (a source with fewer left is an error).
    The training split is flow.train_problems, or problems.n when that is unset; a config that
    sets both to different numbers is refused instead of one silently winning."""
    train = cfg.flow.train_problems
    if train is None:
        train = cfg.problems.n
    elif "n" in cfg.problems.model_fields_set and cfg.problems.n != train:
        raise UserError(f"problems.n ({cfg.problems.n}) and flow.train_problems ({train}) disagree: the flow "
                        "samples flow.train_problems training problems; drop one of them or make them equal")
    counts = {"seed": cfg.flow.seed_problems, "train": train}
    counts.update({f"iter{k}": cfg.flow.iter_problems for k in range(1, cfg.flow.iterations + 1)})
    counts["eval"] = cfg.eval.n_problems
    return counts


# ---------------------------------------------------------------- loading

MAX_CONFIG_BYTES = 1 << 20  # a config is a page of YAML, not a data set
_QUOTE_CHARS = 80  # longest value an error message quotes


def quoted(value: Any, limit: int = _QUOTE_CHARS) -> str:
    """repr(value) cut to `limit` characters: an error line never carries a whole input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_MAX_YAML_DEPTH = 50  # a config nests a few levels; deeper is an attack on the recursive composer


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without aliases, nested at most _MAX_YAML_DEPTH levels: `*name` could expand
    a few hundred bytes into gigabytes (an alias bomb), and nothing in a config needs them."""

    depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise yaml.constructor.ConstructorError(
                None, None, "YAML aliases (*name) are not allowed in a config", event.start_mark)
        if self.depth >= _MAX_YAML_DEPTH:
            raise yaml.constructor.ConstructorError(
                None, None, f"nested deeper than {_MAX_YAML_DEPTH} levels", event.start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def parse_yaml(text: str) -> Any:
    """YAML as configs are read: safe types only, no aliases."""
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    parsed = []
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"--set {quoted(item)}: expected KEY=VALUE, e.g. --set generate.n_samples=4")
        key, raw = item.split("=", 1)
        try:
            value = parse_yaml(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        parsed.append((key.strip(), value))
    return parsed


def format_validation_error(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]
                   if not str(p).startswith(("function-after", "constrained-", "list[", "int")))
    loc = loc if len(loc) <= _QUOTE_CHARS else loc[: _QUOTE_CHARS - 1] + "…"
    msg = err["msg"].removeprefix("Value error, ")
    extra = f" (got {quoted(err['input'])})" if err["type"] not in ("missing", "extra_forbidden",
                                                              "value_error") else ""
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    return f"config error in {source}: {loc}: {msg}{extra}" if loc else f"config error in {source}: {msg}"


def _parse_config_file(path: Path) -> Any:
    """The config file's YAML, or one UserError line: missing, not a file, too big, not UTF-8,
    not YAML (aliases included)."""
    if not path.exists():
        raise UserError(f"{path}: config file not found")
    if not path.is_file():
        raise UserError(f"{path}: not a file (a config is a YAML file)")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(f"{path}: config file over {MAX_CONFIG_BYTES >> 20} MiB")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return parse_yaml(text) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise UserError(f"{path}: not valid YAML ({first[:200]})") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TopsConfig:
    """YAML + dotted overrides -> validated TopsConfig, or one UserError line."""
    data: dict = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        data = _parse_config_file(path)
        if not isinstance(data, dict):
            raise UserError(f"{path}: the top level must be a mapping of sections")
    for key, value in parse_overrides(overrides):
        _set_dotted(data, key, value)
    try:
        return TopsConfig.model_validate(data)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, source)) from None


def config_section(cfg: TopsConfig, *names: str) -> dict:
    """JSON-able slice of the config, used in manifests and cache keys."""
    dumped = cfg.model_dump(mode="json")
    return {name: dumped[name] for name in names}
