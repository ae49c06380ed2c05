"""A toy checker for tops' tests, installed as the entry point `lastword` of group
`tops.checkers`: the answer is a response's last word, and it is right when its length has the
parity of the gold answer's. Nothing a real user wants, everything a test can tell apart from
the built-ins: it answers on text the `math` checker finds no answer in, and its verdicts come
from a worker process (`quick` decides nothing). `stall` is lastword that never returns on the
answer "forever" (the per-row deadline's case) and raises on "boom"."""

from __future__ import annotations

from tops.checkers import Checker


class LastWordChecker(Checker):
    name = "lastword"

    def gold(self, answer: str) -> str:
        return answer.strip()

    def extract(self, response: str, answer_phrases: bool = True) -> str | None:
        words = response.split()
        return words[-1].strip(".,;:!?") or None if words else None

    def equal(self, gold: str, pred: str) -> bool:
        return len(pred) % 2 == len(gold) % 2

    def vote_key(self, pred: str) -> str:
        return pred.lower()


class StallChecker(LastWordChecker):
    name = "stall"

    def equal(self, gold: str, pred: str) -> bool:
        if pred == "boom":
            raise RuntimeError("this checker cannot judge 'boom'")
        while pred == "forever":  # a checker that hangs: only killing its process stops it
            pass
        return super().equal(gold, pred)
