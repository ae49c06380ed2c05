"""Depth controls at sampling time that work with every engine: budget forcing (s1) and
AlphaOne (alpha1), both by step-wise generation on top of the Engine protocol.

Each sample is a sequence that is generated piece by piece: the engine runs until a control
stop string (the end-of-thinking delimiter; for AlphaOne also paragraph breaks, or "Wait"
after the alpha moment), the end of sequence or a token limit; then the controller decides
what to append (nothing, "Wait", the delimiter, or delimiter + answer prefix) and resubmits
the chat with `Request.prefix` = the response so far (prefix caching makes this cheap on
vLLM). All live sequences of a round go to the engine together; since the protocol has one
SamplingConfig per call, a round is split into as few calls as the sequences' stop sets and
token limits allow (limits within a factor of 2 share a call at the smallest of them; a
sequence cut early by that is just resubmitted). The first round asks for n samples per
request in one call, then every sample goes on as its own sequence.

Rules
- Thinking = the response before the end-of-thinking delimiter (all of it while the delimiter
  has not been written). `delimiter: null` is for models without a thinking block: there the
  end of sequence ends the thinking, and a forced close appends just `answer_prefix`.
- Budget forcing. Minimum: when the model tries to end its thinking (writes the delimiter or
  stops) and fewer than `min_continuations` "Wait"s were appended, the delimiter is dropped
  and "Wait" appended instead (only while the thinking budget and `sampling.max_tokens` leave
  room for it and one more token). Maximum: the thinking never exceeds `max_thinking_tokens`;
  when they are spent, delimiter + answer_prefix are appended and the model answers.
- AlphaOne. alpha moment = alpha * N_think thinking tokens (N_think from the config, or the
  mean thinking tokens of a pilot run: one uncontrolled sample of the same requests). Before
  it, after every paragraph break "Wait" is appended with probability 1 - t/(alpha*N_think)
  (t = thinking tokens so far; a seeded RNG per sample). Generation pieces stop at the alpha
  moment, so no "Wait" is ever inserted after it; from there on a wait word the model writes
  is cut and replaced by delimiter + answer_prefix. A delimiter written before the alpha
  moment ends the thinking normally.
- `sampling.max_tokens` caps the whole response (thinking, injected strings, answer), as
  without a control: a "Wait" is only appended with room for it and one more token, and a
  close that does not fit ends the sample as "length". `sampling.stop` strings end the
  sample as usual. A stop string is honoured at its first occurrence even where the engine
  missed it (inside a piece, or spanning two pieces after a cut at a token limit).

Token counting, two units on purpose:
- Thinking budgets and the alpha moment are in tokens of the thinking TEXT: every appended
  thinking segment (a generated piece with the paragraph break that stopped it restored, an
  injected "Wait") is counted with `engine.count_tokens`, the same for every engine. Where a
  thinking budget applies, the finished thinking is also re-tokenized as a whole and cut back
  to the budget if the running sum under-counted, so count_tokens(thinking) <= budget holds.
- The reported `n_tokens`, and the `sampling.max_tokens` cap, are in tokens the response
  cost: the sum of the engine's own generated-token counts of the pieces (as an uncontrolled
  sample from the same engine would report) plus the injected strings counted with
  `engine.count_tokens`. A stop string the controller restores into the text (the model's own
  delimiter) is counted as the engine counts stop strings: vLLM counts their tokens as
  generated, the transformers engine does not.
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from tops.config import AlphaOneConfig, BudgetForcingConfig, SamplingConfig
from tops.engines.base import Completion, Engine, Request, positions_by_count, samples_per_request
from tops.errors import UserError

DepthControl = BudgetForcingConfig | AlphaOneConfig

THINK, ANSWER, DONE = "think", "answer", "done"


@dataclass(frozen=True)
class Injection:
    text: str  # exactly what was appended to the response
    kind: str  # "wait" | "close" (forced at the thinking budget) | "replace" (a Wait after alpha)
    at_tokens: int  # thinking tokens written before it
    at_char: int  # its offset in the response


@dataclass(frozen=True)
class DepthSample:
    """One controlled sample: the completion handed to the pipeline plus what was done to it."""

    completion: Completion
    injections: tuple[Injection, ...]
    thinking: str  # the response before the end-of-thinking delimiter
    thinking_tokens: int  # count_tokens(thinking)
    alpha_moment: float | None = None  # AlphaOne: alpha * N_think
    alpha_index: int | None = None  # AlphaOne: offset in the response where t reached it


@dataclass
class _Seq:
    request: Request
    origin: int  # index of the request
    control: DepthControl
    cap: int  # sampling.max_tokens
    rng: random.Random | None = None
    alpha_moment: float | None = None
    response: str = ""
    phase: str = THINK
    t: int = 0  # thinking tokens so far (count_tokens of the thinking text)
    total: int = 0  # response tokens so far (generated by the engine + injected)
    continued: int = 0  # "Wait"s appended for the minimum budget
    think_end: int | None = None
    alpha_index: int | None = None
    injections: list[Injection] = field(default_factory=list)
    finish: str = "stop"
    stop_reason: str | None = None
    fresh: bool = True
    cut: bool = False  # the last piece ended at a token limit, mid-text
    # this round's call
    asked: int = 0
    stops: tuple[str, ...] = ()

    @property
    def budget(self) -> BudgetForcingConfig | None:
        return self.control if isinstance(self.control, BudgetForcingConfig) else None

    @property
    def alpha(self) -> AlphaOneConfig | None:
        return self.control if isinstance(self.control, AlphaOneConfig) else None

    def pre_alpha(self) -> bool:
        return self.alpha is not None and self.t < self.alpha_moment

    def control_stops(self) -> list[str]:
        """Stop strings the controller acts on in the current phase."""
        if self.phase != THINK:
            return []
        stops = [self.control.delimiter] if self.control.delimiter else []
        if self.alpha is not None:
            stops += self.alpha.paragraph_breaks if self.pre_alpha() else self.alpha.wait_words
        return stops

    def limit(self) -> int:
        """Most tokens the next piece may have."""
        room = self.cap - self.total
        if self.phase == THINK:
            if self.budget is not None and self.budget.max_thinking_tokens is not None:
                room = min(room, self.budget.max_thinking_tokens - self.t)
            if self.pre_alpha():
                room = min(room, math.ceil(self.alpha_moment - self.t))
        return room


class _Counter:
    """engine.count_tokens with a cache for the few fixed strings (Wait, delimiters)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.cache: dict[str, int] = {}

    def many(self, texts: list[str]) -> list[int]:
        counts = [0] * len(texts)
        todo = [i for i, t in enumerate(texts) if t]
        if todo:
            for i, k in zip(todo, self.engine.count_tokens([texts[i] for i in todo]), strict=True):
                counts[i] = int(k)
        return counts

    def one(self, text: str) -> int:
        if text not in self.cache:
            self.cache[text] = self.many([text])[0]
        return self.cache[text]


def _close_string(control: DepthControl) -> str:
    return (control.delimiter or "") + control.answer_prefix


def _thinking_of(text: str, delimiter: str | None) -> str:
    if delimiter and delimiter in text:
        return text[:text.index(delimiter)]
    return text


def _wait_text(seq: _Seq) -> str:
    """The wait string, after a space when the response does not end in whitespace."""
    sep = " " if seq.response and not seq.response[-1].isspace() else ""
    return sep + seq.control.wait


# ---------------------------------------------------------------- state transitions


class _Controller:
    def __init__(self, engine: Engine, sampling: SamplingConfig):
        self.engine = engine
        self.sampling = sampling
        self.user_stops = list(sampling.stop)
        self.count = _Counter(engine)

    @staticmethod
    def add(seq: _Seq, text: str, k: int, thinking: bool, generated: int | None = None) -> None:
        """Append text of k counted tokens (`generated`: the engine's own count, for pieces)."""
        seq.response += text
        seq.total += k if generated is None else generated
        if thinking:
            seq.t += k
            if seq.alpha is not None and seq.alpha_index is None and seq.t >= seq.alpha_moment:
                seq.alpha_index = len(seq.response)

    def inject(self, seq: _Seq, text: str, kind: str) -> None:
        seq.injections.append(Injection(text, kind, seq.t, len(seq.response)))
        self.add(seq, text, self.count.one(text), thinking=kind == "wait")

    def finish(self, seq: _Seq, reason: str, stop_reason: str | None = None) -> None:
        if seq.phase == THINK:
            seq.think_end = len(seq.response)
            if self._over_budget(seq):  # cut back and close instead of ending here
                self.end_thinking(seq, natural=False, kind="close")
                return
        seq.phase, seq.finish, seq.stop_reason = DONE, reason, stop_reason

    def _over_budget(self, seq: _Seq) -> bool:
        """Re-tokenize the finished thinking; if it is over the budget, cut it to the budget."""
        budget = seq.budget
        if budget is None or budget.max_thinking_tokens is None:
            return False
        limit = budget.max_thinking_tokens
        thinking = seq.response[:seq.think_end]
        real = self.count.many([thinking])[0]
        if real <= limit:
            return False
        lo, hi = 0, len(thinking)  # longest prefix within the budget
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.count.many([thinking[:mid]])[0] <= limit:
                lo = mid
            else:
                hi = mid - 1
        seq.response = thinking[:lo]
        seq.think_end = lo
        seq.injections = [i for i in seq.injections if i.at_char + len(i.text) <= lo]
        seq.continued = sum(i.kind == "wait" for i in seq.injections)
        seq.t = self.count.many([seq.response])[0]
        seq.total = min(seq.total, seq.t)
        return True

    def end_thinking(self, seq: _Seq, natural: bool, kind: str = "close") -> None:
        """The thinking ends here: restore the model's own delimiter or force a close."""
        seq.think_end = len(seq.response)
        if self._over_budget(seq):
            natural = False
        if natural:  # the engine's count of the piece already holds it where it counts stops
            seq.phase = ANSWER
            self.add(seq, seq.control.delimiter, self.count.one(seq.control.delimiter),
                     thinking=False, generated=0)
        elif seq.total + self.count.one(_close_string(seq.control)) > seq.cap:
            seq.phase, seq.finish, seq.stop_reason = DONE, "length", None  # no room to close
        else:
            seq.phase = ANSWER
            self.inject(seq, _close_string(seq.control), kind)

    def can_continue(self, seq: _Seq) -> bool:
        """Minimum budget: one more "Wait" is owed and fits, with room for one more token."""
        budget = seq.budget
        if budget is None or seq.continued >= budget.min_continuations:
            return False
        k = self.count.one(_wait_text(seq))
        if budget.max_thinking_tokens is not None and seq.t + k >= budget.max_thinking_tokens:
            return False
        reserve = self.count.one(_close_string(budget)) if budget.max_thinking_tokens else 0
        return seq.total + k + reserve < seq.cap

    def settle(self, seq: _Seq) -> None:
        """Apply the limits that need no generation before the next round."""
        budget = seq.budget
        if (seq.phase == THINK and budget is not None and budget.max_thinking_tokens is not None
                and seq.t >= budget.max_thinking_tokens):
            self.end_thinking(seq, natural=False, kind="close")
        if seq.phase != DONE and seq.total >= seq.cap:
            self.finish(seq, "length")  # (or, over the thinking budget, cut back and closed)

    # ------------------------------------------------------------ one generated piece

    def normalize(self, seq: _Seq, text: str, stop: str | None, finish: str):
        """Make a piece end at its first stop string, as the protocol says it should.

        - A stop inside the text: an engine that matched a later stop or none (the transformers
          engine picks stop strings in list order and only matches them at token ends).
        - A stop string spanning the previous response and this piece, which an engine cannot
          see (it matches stops in new text only); only after a piece cut at a token limit, as
          other boundaries are the controller's own. The response is cut back to it.
        Either way the piece then ends at that stop.
        """
        stops = set(seq.stops) | set(self.user_stops)
        found = [(text.find(s), s) for s in stops if s in text]
        if found:
            pos, s = min(found)
            text, stop, finish = text[:pos], s, "stop"
        if not seq.cut:
            return text, stop, finish
        start = len(seq.response)
        joined = seq.response + text
        best = None
        for s in stops:
            if len(s) < 2:
                continue
            pos = joined.find(s, max(0, start - len(s) + 1))
            if 0 <= pos < start < pos + len(s) and (best is None or pos < best[0]):
                best = (pos, s)
        if best is None:
            return text, stop, finish
        seq.response = joined[:best[0]]  # token counts keep the cut chars (over-counting is safe)
        if seq.alpha_index is not None:
            seq.alpha_index = min(seq.alpha_index, len(seq.response))
        return "", best[1], "stop"

    def apply(self, seq: _Seq, segment: str, stop: str | None, finish: str, n_tokens: int,
              k: int, restored: str) -> None:
        """Append one piece (segment = its text + the restored paragraph break, k = its counted
        tokens) and decide what comes next."""
        control_stop = stop if stop is not None and stop in seq.stops else None
        self.add(seq, segment, k, thinking=seq.phase == THINK, generated=n_tokens)
        seq.cut = finish == "length"
        if finish == "length":
            if n_tokens < seq.asked:  # the engine had no more room in the context
                self.finish(seq, "length")
            return
        if control_stop is None:  # end of sequence or a user stop string
            if seq.phase == THINK and stop is None and self.can_continue(seq):
                seq.continued += 1
                self.inject(seq, _wait_text(seq), "wait")
            else:
                self.finish(seq, "stop", stop)
            return
        # a control stop: only in the thinking phase
        if control_stop == seq.control.delimiter:
            if self.can_continue(seq):
                seq.continued += 1
                self.inject(seq, _wait_text(seq), "wait")
            else:
                self.end_thinking(seq, natural=True)
        elif restored:  # AlphaOne paragraph break before the alpha moment
            if seq.t < seq.alpha_moment:
                p_wait = 1.0 - seq.t / seq.alpha_moment
                wait = _wait_text(seq)
                # drawn whatever the room, so the draws do not depend on the cap
                if seq.rng.random() < p_wait and seq.total + self.count.one(wait) < seq.cap:
                    self.inject(seq, wait, "wait")
        else:  # AlphaOne: a wait word after the alpha moment becomes the end of thinking
            self.end_thinking(seq, natural=False, kind="replace")


# ---------------------------------------------------------------- the loop


def _pilot_n_think(engine: Engine, requests: list[Request], sampling: SamplingConfig,
                   controls: list[DepthControl], counter: _Counter) -> dict[int, float]:
    """id(control) -> N_think, the mean thinking tokens of one uncontrolled sample per request,
    for AlphaOne controls without n_think."""
    need = [i for i, c in enumerate(controls) if isinstance(c, AlphaOneConfig) and c.n_think is None]
    if not need:
        return {}
    outs = engine.generate([requests[i] for i in need], 1, sampling)
    texts = [_thinking_of(out[0].text, controls[i].delimiter) for i, out in zip(need, outs, strict=True)]
    per_control: dict[int, list[int]] = defaultdict(list)
    for i, k in zip(need, counter.many(texts), strict=True):
        per_control[id(controls[i])].append(k)
    return {key: max(1.0, sum(v) / len(v)) for key, v in per_control.items()}


def _rng(control: AlphaOneConfig, request: Request, origin: int, sample: int) -> random.Random:
    """A per-sample RNG that depends on the seed, the problem and effort, and the sample index,
    not on how the work was batched."""
    key = [control.seed, request.meta.get("row", origin), request.meta.get("effort"), sample]
    return random.Random(json.dumps(key, default=str))


def _calls(active: list[_Seq], user_stops: list[str]):
    """Group a round's sequences into engine calls: same stop set, limits within 2x."""
    by_stops: dict[tuple[str, ...], list[tuple[int, _Seq]]] = defaultdict(list)
    for seq in active:
        stops = tuple(sorted(set(seq.control_stops()) | set(user_stops)))
        by_stops[stops].append((seq.limit(), seq))
    for stops, items in by_stops.items():
        items.sort(key=lambda item: item[0])
        i = 0
        while i < len(items):
            base, j = items[i][0], i
            while j < len(items) and items[j][0] < 2 * base:
                j += 1
            yield stops, base, [seq for _, seq in items[i:j]]
            i = j


def generate_controlled(engine: Engine, requests: list[Request], n: int, sampling: SamplingConfig,
                        controls: list[DepthControl]) -> list[list[DepthSample]]:
    """n controlled samples per request (controls[i] applies to requests[i]), in request order."""
    if len(controls) != len(requests):
        raise ValueError("one control per request")
    ctl = _Controller(engine, sampling)
    for control in {id(c): c for c in controls}.values():
        if isinstance(control, BudgetForcingConfig) and control.max_thinking_tokens is not None:
            room = control.max_thinking_tokens + ctl.count.one(_close_string(control))
            if room >= sampling.max_tokens:
                raise UserError(
                    f"budget forcing: max_thinking_tokens={control.max_thinking_tokens} plus the "
                    f"close string leaves no room for the answer within sampling.max_tokens="
                    f"{sampling.max_tokens}")
    n_think = _pilot_n_think(engine, requests, sampling, controls, ctl.count)

    seqs: list[list[_Seq]] = []
    for i, (request, control) in enumerate(zip(requests, controls, strict=True)):
        row = []
        for j in range(n):
            seq = _Seq(request=request, origin=i, control=control, cap=sampling.max_tokens)
            if isinstance(control, AlphaOneConfig):
                seq.alpha_moment = control.alpha * (control.n_think or n_think[id(control)])
                seq.rng = _rng(control, request, i, j)
            row.append(seq)
        seqs.append(row)
    flat = [seq for row in seqs for seq in row]

    while True:
        for seq in flat:
            if seq.phase != DONE:
                ctl.settle(seq)
        active = [seq for seq in flat if seq.phase != DONE]
        if not active:
            break
        pieces: list[tuple[_Seq, Completion]] = []
        for stops, max_tokens, members in _calls(active, ctl.user_stops):
            step = sampling.model_copy(update={"max_tokens": max_tokens, "stop": list(stops)})
            for seq in members:
                seq.asked, seq.stops = max_tokens, tuple(s for s in seq.control_stops())
            by_origin: dict[int, list[_Seq]] = defaultdict(list)
            for seq in members:
                by_origin[seq.origin].append(seq)
            if n > 1 and all(seq.fresh for seq in members) and all(len(v) == n for v in by_origin.values()):
                # first round: n samples per request in one call, then independent sequences
                outs = engine.generate([requests[o] for o in by_origin], n, step)
                for group, out in zip(by_origin.values(), outs, strict=True):
                    pieces.extend(zip(group, out, strict=True))
            else:
                reqs = [replace(seq.request, prefix=seq.request.prefix + seq.response) for seq in members]
                outs = engine.generate(reqs, 1, step)
                pieces.extend((seq, out[0]) for seq, out in zip(members, outs, strict=True))
        normalized = []
        for seq, c in pieces:
            seq.fresh = False
            text, stop, finish = ctl.normalize(seq, c.text, c.stop_reason, c.finish_reason)
            # a paragraph break (AlphaOne, before the alpha moment) stays in the response
            restore = (stop if seq.alpha is not None and stop in seq.alpha.paragraph_breaks
                       and stop in seq.stops else "")
            generated = min(c.n_tokens, seq.asked)  # an engine that re-tokenizes may say more
            normalized.append((seq, text + restore, stop, finish, generated, restore))
        counts = ctl.count.many([segment for _, segment, *_ in normalized])
        for (seq, segment, stop, finish, n_tokens, restore), k in zip(normalized, counts, strict=True):
            ctl.apply(seq, segment, stop, finish, n_tokens, k, restore)

    thinking = [seq.response[:seq.think_end if seq.think_end is not None else len(seq.response)]
                for seq in flat]
    samples = []
    for seq, th, tk in zip(flat, thinking, ctl.count.many(thinking), strict=True):
        completion = Completion(
            text=seq.response, n_tokens=seq.total, finish_reason=seq.finish, stop_reason=seq.stop_reason,
            depth_control=seq.control.kind, n_injected=len(seq.injections),
            injected=tuple(inj.text for inj in seq.injections))
        samples.append(DepthSample(completion, tuple(seq.injections), th, tk,
                                   seq.alpha_moment, seq.alpha_index))
    return [samples[i * n:(i + 1) * n] for i in range(len(requests))]


def generate_with_depth(engine: Engine, requests: list[Request], n: int | Sequence[int], sampling: SamplingConfig,
                        depth: dict[str, DepthControl]) -> list[list[Completion]]:
    """engine.generate, with each request's effort (meta["effort"]) under its configured depth
    control; requests without one go to the engine in one plain call (n may differ per request).
    Request order is kept."""
    counts = samples_per_request(n, len(requests))
    controls = [depth.get(r.meta.get("effort")) for r in requests]
    if all(c is None for c in controls):
        return engine.generate(requests, counts, sampling)
    out: list[list[Completion] | None] = [None] * len(requests)
    plain = [i for i, c in enumerate(controls) if c is None]
    if plain:
        for i, comps in zip(plain, engine.generate([requests[i] for i in plain], [counts[i] for i in plain], sampling),
                            strict=True):
            out[i] = comps
    ruled = [i for i, c in enumerate(controls) if c is not None]
    for count, group in positions_by_count([counts[i] for i in ruled]).items():  # a round samples its origins alike
        ruled_group = [ruled[j] for j in group]
        results = generate_controlled(engine, [requests[i] for i in ruled_group], count, sampling,
                                      [controls[i] for i in ruled_group])
        for i, samples in zip(ruled_group, results, strict=True):
            out[i] = [s.completion for s in samples]
    return out
