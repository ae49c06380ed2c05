"""The reasoning efforts: their system prompts (the paper's wording) and chat-template switches."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from tops.config.base import Strict

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
