"""Micro-batches: which examples go together (a plan per epoch) and how they become tensors.

A plan is a list of micro-batches (lists of example indices) covering every example exactly
once. Its cost measure follows the path: padded rows cost rows x longest positions, a
padding-free row the sum of its lengths. With `max_tokens_per_batch` no micro-batch costs more
than the budget; without it a micro-batch holds `batch_size` examples, as before.

- padded: examples in random order, cut every `batch_size` (with a budget: every
  budget // max_length, so no cut can exceed it). The plain-Trainer baseline.
- length_grouped: examples sorted by length (random tie-breaks), consecutive runs cut while
  rows x longest fits; transformers' group_by_length only sorts within mega-batches of 50
  batches, which left 11% padding on 96 examples.
- padding-free paths: best-fit decreasing bin packing of lengths into budget-sized rows.
The order of the micro-batches is shuffled per epoch, with the costliest first so that a
micro-batch too big for memory fails at once. The number of micro-batches is the same in every
epoch (the Trainer sizes its loop once) and, over several processes, a multiple of their
number: each process takes every n-th, in slots of similar cost.
"""

from __future__ import annotations

import bisect

import numpy as np

IGNORE = -100


def micro_batch_cost(lengths: list[int] | np.ndarray, padding_free: bool) -> int:
    """Positions the model computes on for these example lengths."""
    if len(lengths) == 0:
        return 0
    return int(sum(lengths)) if padding_free else len(lengths) * int(max(lengths))


def _sorted_desc(lengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.lexsort((rng.random(len(lengths)), -lengths))


def _best_fit_decreasing(lengths: np.ndarray, order: np.ndarray, budget: int) -> list[list[int]]:
    """Rows of total length <= budget, each example into the fullest row it still fits."""
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free space, row number), sorted
    for i in order:
        need = int(lengths[i])
        at = bisect.bisect_left(free, (need, -1))
        if at < len(free):
            space, row = free.pop(at)
        else:
            space, row = budget, len(rows)
            rows.append([])
        rows[row].append(int(i))
        if space - need > 0:
            bisect.insort(free, (space - need, row))
    return rows


def _sorted_runs(lengths: np.ndarray, order: np.ndarray, batch_size: int, budget: int | None) -> list[list[int]]:
    """Consecutive runs of the length-descending order: `batch_size` long, or while rows x
    longest (the run's first) fits the budget."""
    if budget is None:
        return [order[k:k + batch_size].tolist() for k in range(0, len(order), batch_size)]
    runs, run = [], []
    for i in order:
        if run and (len(run) + 1) * int(lengths[run[0]]) > budget:
            runs.append(run)
            run = []
        run.append(int(i))
    return runs + ([run] if run else [])


def _split_to_multiple(batches: list[list[int]], lengths: np.ndarray, n: int) -> list[list[int]]:
    """Split the largest micro-batches in two until their number is a multiple of n (every
    process must run as many). Repeats a micro-batch only when nothing is left to split (fewer
    examples than processes)."""
    batches = [list(b) for b in batches]
    while len(batches) % n:
        sizes = [len(b) for b in batches]
        big = int(np.argmax(sizes))
        if sizes[big] < 2:
            batches.append(list(batches[0]))
            continue
        batch = sorted(batches.pop(big), key=lambda i: -lengths[i])
        batches += [batch[0::2], batch[1::2]]
    return batches


def plan_micro_batches(lengths: list[int], *, batching: str, batch_size: int, max_tokens: int | None,
                       max_length: int, seed: int, epoch: int = 0, processes: int = 1) -> list[list[int]]:
    """Every example index exactly once, in micro-batches, in the order they train (all
    processes' micro-batches interleaved: process r takes positions r, r + n, ...)."""
    lengths_arr = np.asarray(lengths, dtype=np.int64)
    rng = np.random.default_rng([seed, epoch])
    padding_free = batching not in ("padded", "length_grouped")
    if batching == "padded":
        per_batch = batch_size if max_tokens is None else max(1, max_tokens // max_length)
        order = rng.permutation(len(lengths_arr))
        batches = [order[k:k + per_batch].tolist() for k in range(0, len(order), per_batch)]
    elif batching == "length_grouped" or max_tokens is None:
        batches = _sorted_runs(lengths_arr, _sorted_desc(lengths_arr, rng), batch_size, max_tokens)
    else:
        batches = _best_fit_decreasing(lengths_arr, _sorted_desc(lengths_arr, rng), max_tokens)
    batches = _split_to_multiple(batches, lengths_arr, processes)
    if batching == "padded":
        return batches
    # Slots of `processes` micro-batches of similar cost, shuffled, the costliest slot first.
    costs = [micro_batch_cost(lengths_arr[b], padding_free) for b in batches]
    by_cost = np.argsort(-np.asarray(costs), kind="stable")
    slots = [by_cost[k:k + processes] for k in range(0, len(by_cost), processes)]
    slots = slots[:1] + [slots[k] for k in 1 + rng.permutation(len(slots) - 1)]
    return [batches[i] for slot in slots for i in slot]


def _rebalance_base():
    """transformers' Trainer passes a BatchRebalanceSampler as `batch_sampler` (variable-size
    batches) and keeps accelerate from re-sharding it, as a rank-aware sampler needs."""
    from transformers.trainer_pt_utils import BatchRebalanceSampler

    return BatchRebalanceSampler


class MicroBatchSampler(_rebalance_base()):
    """This process's micro-batches of the epoch's plan (set_epoch is called by the Trainer)."""

    def __init__(self, lengths: list[int], *, batching: str, batch_size: int, max_tokens: int | None,
                 max_length: int, seed: int, rank: int = 0, processes: int = 1):
        self.lengths = list(lengths)
        self.settings = {"batching": batching, "batch_size": batch_size, "max_tokens": max_tokens,
                         "max_length": max_length, "seed": seed, "processes": processes}
        self.rank, self.processes = rank, processes
        self.epoch = 0
        self._count = len(self.plan(0)) // processes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def plan(self, epoch: int) -> list[list[int]]:
        return plan_micro_batches(self.lengths, epoch=epoch, **self.settings)

    def __len__(self) -> int:
        return self._count

    def __iter__(self):
        return iter(self.plan(self.epoch)[self.rank::self.processes])


class PaddedCollator:
    """Right-padded rows with an attention mask; labels -100 on padding."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        longest = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), longest), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(examples), longest), dtype=torch.long)
        for row, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[row, :n] = torch.as_tensor(e["input_ids"])
            labels[row, :n] = torch.as_tensor(e["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class PackedCollator:
    """One row of concatenated sequences, position_ids restarting at 0 for each, no attention
    mask (transformers reads the sequence boundaries off the position_ids). The first label of
    each sequence is -100, so no position learns across a boundary. For flash-attn's varlen
    kernel the boundaries also come as cu_seq_lens, computed here on CPU (the model would
    otherwise derive them with a device-to-host sync in every layer, as TRL's collator notes)."""

    def __init__(self, varlen_kwargs: bool = False):
        self.varlen_kwargs = varlen_kwargs

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        ids = torch.cat([torch.as_tensor(e["input_ids"], dtype=torch.long) for e in examples])
        positions = torch.cat([torch.arange(len(e["input_ids"])) for e in examples])
        labels = torch.cat([torch.as_tensor([IGNORE, *e["labels"][1:]], dtype=torch.long) for e in examples])
        batch = {"input_ids": ids[None], "position_ids": positions[None], "labels": labels[None]}
        if self.varlen_kwargs:
            lengths = torch.tensor([0] + [len(e["input_ids"]) for e in examples])
            batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = lengths.cumsum(0).to(torch.int32)
            batch["max_length_q"] = batch["max_length_k"] = int(lengths.max())
        return batch


def split_packed(inputs: dict) -> list[dict]:
    """A packed row back into one input dict per sequence (per_sequence path). Each holds one
    sequence with positions 0..n-1 and no mask, so attention runs with is_causal on it alone."""
    import torch

    starts = torch.nonzero(inputs["position_ids"][0] == 0).flatten().tolist() + [inputs["input_ids"].shape[1]]
    rest = {k: v for k, v in inputs.items() if k not in ("input_ids", "position_ids", "labels", "attention_mask")
            and not k.startswith(("cu_seq_lens", "max_length"))}
    return [{**rest, **{k: inputs[k][:, a:b] for k in ("input_ids", "position_ids", "labels")}}
            for a, b in zip(starts, starts[1:], strict=False)]


def positions_and_tokens(inputs: dict) -> tuple[int, int]:
    """(positions computed, real tokens) of one collated micro-batch."""
    positions = int(inputs["input_ids"].numel())
    mask = inputs.get("attention_mask")
    return positions, int(mask.sum()) if mask is not None else positions
