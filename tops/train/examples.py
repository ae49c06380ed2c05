"""SFT examples as token ids with per-token labels, built here rather than inside TRL.

TRL can mask prompts itself, but not erroneous steps: those are character spans inside the
response, so the chat text is tokenized once with its offset mapping and every label is
decided from characters: -100 before the assistant's response (system, user, the assistant
header) and on any token touching an erroneous span (`tops.masking.token_loss_mask`); the
response and the end-of-turn tokens after it are trained, as TRL trains a completion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tops.errors import UserError
from tops.masking import erroneous_spans, token_loss_mask

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
    texts, starts, spans = [], [], []
    efforts = data["effort"].tolist() if "effort" in data.columns else [None] * len(data)
    for i, (question, response, effort) in enumerate(
            zip(data["question"].tolist(), data["response"].tolist(), efforts, strict=True)):
        system = system_prompt_for(system_mode, effort, prompts)
        prompt = tokenizer.apply_chat_template(chat_messages(question, system), tokenize=False,
                                               add_generation_prompt=True)
        full = tokenizer.apply_chat_template(chat_messages(question, system, response), tokenize=False)
        row_spans = erroneous_spans(_steps_of(data["steps"].iloc[i])) if has_steps else []
        texts.append(full)
        starts.append(_response_start(full, prompt, response, bool(row_spans), data, i))
        spans.append(row_spans)

    out = SFTExamples()
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


def _response_start(full: str, prompt: str, response: str, needs_exact: bool,
                     data: pd.DataFrame, i: int) -> int:
    """Character where the assistant's response starts in the rendered chat."""
    if full.startswith(prompt) and full.startswith(response, len(prompt)):
        return len(prompt)
    common = next((k for k, (a, b) in enumerate(zip(full, prompt, strict=False)) if a != b),
                  min(len(full), len(prompt)))
    found = full.find(response, common)
    if found >= 0:
        return found
    if needs_exact:  # the template rewrites the response: spans would land on the wrong text
        raise UserError(f"{_row_name(data, i)}: the chat template changes the response text, so its "
                        "erroneous-step spans cannot be placed")
    return common
