"""One section per data stage: generate (with depth control), verify, select, pairs, mask,
seed and eval."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from tops import answers
from tops.config.base import MAX_SAMPLES, Strict, quoted
from tops.config.efforts import EFFORT_ORDER
from tops.config.problems import BenchmarkConfig, SourceConfig
from tops.config.run_model import EngineConfig, SamplingConfig


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
    n_samples: int = Field(1, ge=1, le=MAX_SAMPLES)
    # Effort name -> samples of that effort, instead of n_samples. {low: 4}: the short effort
    # is cheap to sample again, and select.min_effort_accuracy then tells skill from luck.
    n_samples_by_effort: dict[str, Annotated[int, Field(ge=1, le=MAX_SAMPLES)]] = Field(default_factory=dict)
    shard_size: int = Field(256, ge=1)  # (problem, effort) prompts per resumable shard
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    # Effort name -> depth control applied when sampling that effort (tops/depth.py).
    depth: dict[str, DepthControlConfig] = Field(default_factory=dict)

    def samples_for(self, effort: str) -> int:
        return self.n_samples_by_effort.get(effort, self.n_samples)

    @field_validator("efforts")
    @classmethod
    def _each_effort_once(cls, efforts: list[str]) -> list[str]:
        """An effort listed twice would write every (problem, effort, sample_idx) row twice."""
        twice = next((e for i, e in enumerate(efforts) if e in efforts[:i]), None)
        if twice is not None:
            raise ValueError(f"effort {quoted(twice)} is listed more than once")
        return efforts


class VerifyConfig(Strict):
    timeout_s: float = Field(5.0, gt=0)
    workers: int | None = Field(None, ge=1)  # None: all cores
    second_checker: Literal["none", "numeric"] = "none"
    answer_phrases: bool = True  # fall back to "the answer is ..." / "Final Answer:" when no \boxed{}
    # Which checker decides `correct` (tops/checkers.py): math, exact, choice, or an installed
    # entry point of group `tops.checkers`. Installed code, by name only.
    checker: str = "math"

    @field_validator("checker")
    @classmethod
    def _checker_installed(cls, name: str) -> str:
        from tops.checkers import check_name

        return check_name(name)


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


def _compiled(pattern: str):
    """Compiled by the engine the mask stage runs them with (`regex`: it can time a match out)."""
    import regex

    try:
        return regex.compile(pattern)
    except regex.error as exc:
        raise ValueError(f"invalid regex {pattern!r}: {exc}") from None


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

    # The most one pattern may spend on one response. The defaults are linear; a pattern that
    # backtracks catastrophically on some response fails the stage, naming itself, instead of
    # stalling it for hours.
    pattern_timeout_s: float = Field(2.0, gt=0)

    @field_validator("answer_patterns", "weak_answer_patterns")
    @classmethod
    def _patterns_capture_answer(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if "answer" not in _compiled(pattern).groupindex:
                raise ValueError(f"regex {pattern!r} needs a named group (?P<answer>...)")
        return patterns

    @field_validator("reflection_pattern")
    @classmethod
    def _pattern_compiles(cls, pattern: str) -> str:
        _compiled(pattern)
        return pattern

    @field_validator("judge_prompt")
    @classmethod
    def _prompt_has_steps(cls, prompt: str) -> str:
        if "{steps}" not in prompt:
            raise ValueError("the judge prompt needs the placeholder {steps}")
        return prompt


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
    maj_k: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)  # majority vote of k; []: as pass_k
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
        if any(k > len(self.seeds) for k in self.maj_k):
            raise ValueError(f"eval.maj_k: k cannot exceed the {len(self.seeds)} samples per problem (eval.seeds)")
        return self


class SeedConfig(Strict):
    # "arith": the arith domain's programmatic teacher; anything else: a model (alias, folder or
    # Hub id) answering under the three effort prompts through `seed.engine`.
    teacher: str = "arith"
    engine: EngineConfig = Field(default_factory=EngineConfig)
    samples_per_effort: int = Field(1, ge=1)
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(max_tokens=4096))
    min_gap_tokens: int = Field(300, ge=0)  # paper: 300 tokens between neighbouring efforts
