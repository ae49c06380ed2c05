"""SFT examples as token ids with per-token labels, built here rather than inside TRL.

TRL can mask prompts itself, but not erroneous steps: those are character spans inside the
response, so the chat text is tokenized once with its offset mapping and every label is
decided from characters: -100 before the assistant's response (system, user, the assistant
header) and on any token touching an erroneous span (`tops.masking.token_loss_mask`); the
response and the end-of-turn tokens after it are trained, as TRL trains a completion.

The trained text always holds the whole response, thinking included. The templates of
QwQ / DeepSeek-R1 distills drop everything before `</think>` from an assistant message (and R1
opens the thinking in the generation prompt); Qwen3 rewrites the block's whitespace. A row is
rendered by the template only when the response survives it verbatim right after the
generation prompt; otherwise as the model produced it at inference: generation prompt +
response + the template's end-of-turn ("generation" rendering). A probe says whether the
template keeps thinking at all; both go into the train summary (`ChatRendering`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tops.errors import UserError
from tops.masking import erroneous_spans, token_loss_mask
from tops.thinking import THINK_OPEN, open_thinking_tail, without_open_tail

IGNORE = -100
_CHUNK = 512  # texts tokenized per call


def system_prompt_for(mode: str, effort: str | None, prompts: Mapping[str, str]) -> str | None:
    """The system message of one example; None (no system message) for an empty prompt.

    `mode` is `TrainConfig.system_prompt`: an effort name, "none" (the unconditioned prompt of
    self-improvement) or "effort" (each row's own effort: format imitation of the tag model).
    """
    name = effort if mode == "effort" else mode
    if name is None or name not in prompts:
        known = ", ".join(sorted(prompts))
        where = f"effort '{name}'" if mode == "effort" else f"train.system_prompt '{mode}'"
        raise UserError(f"{where} has no prompt (known efforts: {known})")
    return prompts[name] or None


def chat_messages(question: str, system: str | None, answer: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


@dataclass
class SFTExamples:
    """Token ids and labels, one list per example, and the counts the run summary reports."""

    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    trainable_tokens: int = 0
    masked_tokens: int = 0  # response tokens excluded for touching an erroneous step
    truncated: int = 0  # examples cut at max_length
    rendering: dict = field(default_factory=dict)  # ChatRendering.summary(): how rows were rendered

    @property
    def tokens(self) -> int:
        return sum(len(ids) for ids in self.input_ids)

    def __len__(self) -> int:
        return len(self.input_ids)


def _steps_of(value) -> list:
    """The `steps` cell as a list of span dicts (Parquet gives arrays; missing gives None/NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return list(value)


def _row_name(data: pd.DataFrame, i: int) -> str:
    if "problem_id" in data.columns:
        return f"problem_id {data['problem_id'].iloc[i]!r} (row {i})"
    return f"row {i}"


def build_sft_examples(data: pd.DataFrame, tokenizer, system_mode: str,
                       prompts: Mapping[str, str], max_length: int) -> SFTExamples:
    """Chat-render, tokenize and label every row; refuse rows left with no trainable token."""
    for column in ("question", "response") + (("effort",) if system_mode == "effort" else ()):
        if column not in data.columns:
            raise UserError(f"training data: column '{column}' is missing")
        if data[column].isna().any():
            raise UserError(f"training data: column '{column}' has missing values")
    if data.empty:
        raise UserError("training data: no rows")
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("the base model's tokenizer has no chat template")
    has_steps = "steps" in data.columns
    rendering = ChatRendering.probe(tokenizer)
    texts, starts, spans = [], [], []
    efforts = data["effort"].tolist() if "effort" in data.columns else [None] * len(data)
    for i, (question, response, effort) in enumerate(
            zip(data["question"].tolist(), data["response"].tolist(), efforts, strict=True)):
        system = system_prompt_for(system_mode, effort, prompts)
        text, start = rendering.render(tokenizer, chat_messages(question, system), response)
        texts.append(text)
        starts.append(start)
        spans.append(erroneous_spans(_steps_of(data["steps"].iloc[i])) if has_steps else [])

    out = SFTExamples(rendering=rendering.summary())
    empty = []
    for first in range(0, len(texts), _CHUNK):  # offsets of a whole large set would not fit in memory
        encoded = tokenizer(texts[first:first + _CHUNK], add_special_tokens=False, return_offsets_mapping=True)
        for i, (ids, offsets) in enumerate(zip(encoded["input_ids"], encoded["offset_mapping"], strict=True),
                                           start=first):
            problem = _label_one(out, ids, offsets, starts[i], spans[i], max_length)
            if problem:
                empty.append(f"{_row_name(data, i)}: {problem}")
    if empty:
        more = f" (and {len(empty) - 3} more)" if len(empty) > 3 else ""
        raise UserError(f"{len(empty)} training example(s) have no trainable token: "
                        f"{'; '.join(empty[:3])}{more}")
    return out


def preference_texts(pairs: pd.DataFrame, tokenizer, systems: list[str | None]) -> dict[str, list[str]]:
    """DPO rows as plain text for TRL, in the "generation" rendering: `prompt` is the chat up to
    the response as the model saw it, `chosen` / `rejected` each a whole response + end-of-turn.
    TRL would render the conversational form through the template, which may strip thinking."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("the base model's tokenizer has no chat template")
    rendering = ChatRendering.probe(tokenizer)
    end = rendering.end_of_turn
    eos = tokenizer.eos_token
    if eos and eos in end:  # TRL appends the EOS token to a completion that does not end with it
        end = end[:end.rindex(eos) + len(eos)]
    bos = tokenizer.bos_token
    adds_bos = bool(bos) and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
    rows: dict[str, list[str]] = {"prompt": [], "chosen": [], "rejected": []}
    for question, chosen, rejected, system in zip(pairs["question"].tolist(), pairs["chosen"].tolist(),
                                                  pairs["rejected"].tolist(), systems, strict=True):
        prompt = rendering.prompt(tokenizer, chat_messages(question, system))
        tail = open_thinking_tail(prompt)
        responses = [chosen, rejected]
        if tail and any(r.startswith(THINK_OPEN) for r in responses):
            # The prompt opens the thinking and a response carries its own opening (as the engines
            # store it): the opening moves to the responses, one shared prompt for both.
            prompt = prompt[:len(prompt) - len(tail)]
            responses = [r if r.startswith(THINK_OPEN) else tail + r for r in responses]
        if adds_bos and prompt.startswith(bos):  # TRL tokenizes with special tokens: no second BOS
            prompt = prompt[len(bos):]
        rows["prompt"].append(prompt)
        rows["chosen"].append(responses[0] + end)
        rows["rejected"].append(responses[1] + end)
    return rows


_PROBE_THOUGHT = "<think>\nLet me check 2 + 2.\n</think>\n\n"
_PROBE_ANSWER = "The answer is 4."


@dataclass(frozen=True)
class ChatRendering:
    """How a tokenizer's chat template renders an example's assistant turn."""

    end_of_turn: str  # what the template writes after an assistant message
    keeps_thinking: bool  # a thinking response survives the template verbatim
    counts: dict = field(default_factory=lambda: {"template": 0, "generation": 0}, compare=False)

    @classmethod
    def probe(cls, tokenizer) -> ChatRendering:
        """Render a probe answer with and without a thinking block and see what survives."""
        user = [{"role": "user", "content": "What is 2 + 2?"}]
        prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        plain = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": _PROBE_ANSWER}],
                                              tokenize=False)
        at = plain.rfind(_PROBE_ANSWER)
        if at < 0:
            raise UserError("the base model's chat template drops the assistant's message")
        thinking = _PROBE_THOUGHT + _PROBE_ANSWER
        full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": thinking}], tokenize=False)
        return cls(end_of_turn=plain[at + len(_PROBE_ANSWER):], keeps_thinking=full.startswith(prompt + thinking))

    def prompt(self, tokenizer, messages: list[dict]) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def render(self, tokenizer, messages: list[dict], response: str) -> tuple[str, int]:
        """(the example's text, the character where the response starts in it)."""
        prompt = self.prompt(tokenizer, messages)
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}],
                                             tokenize=False)
        if full.startswith(prompt + response):
            self.counts["template"] += 1
            return full, len(prompt)
        self.counts["generation"] += 1
        prompt = without_open_tail(prompt, response)
        return prompt + response + self.end_of_turn, len(prompt)

    def summary(self) -> dict:
        return {"template_keeps_thinking": self.keeps_thinking, "rows": dict(self.counts),
                "rendering": ("template" if not self.counts["generation"] else
                              "generation" if not self.counts["template"] else "mixed")}


def _label_one(out: SFTExamples, ids: list[int], offsets, start: int, spans: list[tuple[int, int]],
               max_length: int) -> str | None:
    """Append one example's ids and labels to `out`; the reason it has no trainable token, if so."""
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    trainable = offsets[:, 0] >= start
    if spans:
        erroneous = np.asarray(token_loss_mask(offsets, spans, shift=start), dtype=bool)
    else:
        erroneous = np.zeros(len(ids), dtype=bool)
    labels = np.where(trainable & ~erroneous, np.asarray(ids), IGNORE)
    if len(ids) > max_length:
        out.truncated += 1
        ids, labels = ids[:max_length], labels[:max_length]
        trainable, erroneous = trainable[:max_length], erroneous[:max_length]
    n_trainable = int((labels[1:] != IGNORE).sum())  # the first token is never predicted
    out.input_ids.append(list(ids))
    out.labels.append(labels.tolist())
    out.trainable_tokens += n_trainable
    out.masked_tokens += int((trainable & erroneous).sum())
    if n_trainable:
        return None
    if trainable[1:].any():
        return "every response token is in an erroneous step"
    return f"the prompt fills max_length={max_length}"
