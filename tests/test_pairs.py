"""build_pairs and to_trl_preference: exact pairs on small tables, and TRL's format check."""

from __future__ import annotations

import pytest
from test_select import verified
from transformers import AutoTokenizer
from trl.data_utils import is_conversational, maybe_apply_chat_template

from tops.artifacts import PAIR_COLUMNS, to_table
from tops.config import PairsConfig
from tops.pairs import build_pairs, to_trl_preference


def pair_table():
    return verified([
        # both pairs: shortest incorrect (50) is shorter than the shortest correct (100)
        ("both", "low", 0, 100, True, "easy"), ("both", "medium", 0, 200, True, "easy"),
        ("both", "high", 0, 300, False, "easy"), ("both", "low", 1, 50, False, "easy"),
        ("only-correct", "low", 0, 10, True, "easy"),
        ("only-incorrect", "low", 0, 10, False, "hard"),
        # shortest incorrect (150) is longer than the chosen (100): main pair only
        ("longer-incorrect", "low", 0, 100, True, "medium"),
        ("longer-incorrect", "high", 0, 400, False, "medium"),
        ("longer-incorrect", "medium", 0, 150, False, "medium"),
        # a single incorrect response shorter than the chosen: one pair, not a duplicate
        ("single-incorrect", "high", 0, 100, True, "hard"),
        ("single-incorrect", "low", 0, 30, False, "hard"),
    ])


def rows(pairs):
    return list(zip(pairs["problem_id"], pairs["chosen"], pairs["rejected"], pairs["pair_kind"],
                    strict=True))


def test_pairs_chosen_shortest_correct_rejected_longest_and_shorter_incorrect():
    pairs, summary = build_pairs(pair_table(), PairsConfig())
    assert rows(pairs) == [
        ("both", "both/low/0", "both/high/0", "longest_incorrect"),
        ("both", "both/low/0", "both/low/1", "shorter_incorrect"),
        ("longer-incorrect", "longer-incorrect/low/0", "longer-incorrect/high/0", "longest_incorrect"),
        ("single-incorrect", "single-incorrect/high/0", "single-incorrect/low/0", "longest_incorrect"),
    ]
    assert pairs["chosen_tokens"].tolist() == [100, 100, 100, 100]
    assert pairs["rejected_tokens"].tolist() == [300, 50, 400, 30]
    assert pairs["difficulty"].tolist() == ["easy", "easy", "medium", "hard"]
    assert summary == {
        "problems_in": 5,
        "problems_paired": 3,
        "no_correct": 1,
        "no_incorrect": 1,
        "pairs": {"longest_incorrect": 3, "shorter_incorrect": 1},
        "shorter_incorrect_is_longest": 1,
        "mean_chosen_tokens": 100.0,
        "mean_rejected_tokens": {"longest_incorrect": pytest.approx(243.3), "shorter_incorrect": 50.0},
    }


def test_short_incorrect_pairs_can_be_turned_off():
    pairs, summary = build_pairs(pair_table(), PairsConfig(add_short_incorrect=False))
    assert pairs["pair_kind"].tolist() == ["longest_incorrect"] * 3
    assert summary["pairs"] == {"longest_incorrect": 3, "shorter_incorrect": 0}


def test_pair_ties_are_deterministic():
    df = verified([
        ("p", "medium", 0, 100, True), ("p", "low", 0, 100, True),
        ("p", "high", 0, 500, False), ("p", "low", 1, 500, False), ("p", "low", 0, 500, False),
        ("p", "medium", 1, 20, False), ("p", "medium", 0, 20, False),
    ])
    pairs, _ = build_pairs(df, PairsConfig())
    assert rows(pairs) == [("p", "p/low/0", "p/low/0", "longest_incorrect"),
                           ("p", "p/low/0", "p/medium/0", "shorter_incorrect")]
    assert pairs["rejected_tokens"].tolist() == [500, 20]


def test_pairs_follow_the_pairs_contract():
    pairs, _ = build_pairs(pair_table(), PairsConfig(), system_prompt="Think.")
    assert list(pairs.columns) == [*PAIR_COLUMNS, "difficulty", "system_prompt"]
    assert to_table(pairs, "pairs").num_rows == 4


def test_no_pairs_when_nothing_pairs():
    pairs, summary = build_pairs(verified([("p", "low", 0, 10, True)]), PairsConfig())
    assert pairs.empty and list(pairs.columns) == [*PAIR_COLUMNS, "difficulty"]
    assert summary["problems_paired"] == 0 and summary["mean_chosen_tokens"] is None


def test_trl_prompt_system_message_comes_from_argument_then_column():
    plain, _ = build_pairs(pair_table(), PairsConfig())
    tagged, _ = build_pairs(pair_table(), PairsConfig(), system_prompt="From the column.")
    assert to_trl_preference(plain)[0]["prompt"] == [{"role": "user", "content": "Q both"}]
    assert to_trl_preference(tagged)[0]["prompt"][0] == {"role": "system", "content": "From the column."}
    assert to_trl_preference(tagged, "Explicit.")[0]["prompt"][0]["content"] == "Explicit."
    row = to_trl_preference(plain)[1]
    assert row["chosen"] == [{"role": "assistant", "content": "both/low/0"}]
    assert row["rejected"] == [{"role": "assistant", "content": "both/low/1"}]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)  # the session's tiny model, not a second build


def test_trl_accepts_the_preference_rows(tokenizer):
    pairs, _ = build_pairs(pair_table(), PairsConfig())
    dataset = to_trl_preference(pairs, "Be brief.")
    assert dataset.column_names == ["prompt", "chosen", "rejected"]
    assert len(dataset) == 4
    row = dataset[0]
    assert is_conversational(row)
    text = maybe_apply_chat_template(row, tokenizer)
    assert text["prompt"] == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                              "<|im_start|>user\nQ both<|im_end|>\n<|im_start|>assistant\n")
    assert text["chosen"] == "both/low/0<|im_end|>\n"
    assert text["rejected"] == "both/high/0<|im_end|>\n"
