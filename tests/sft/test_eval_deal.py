"""Held-out items dealt to ranks: equal shares, padding marked, and none at all (eval.generations=0)."""

from stages.sft_eval import _deal


def test_deal_pads_every_rank_to_the_same_count_and_allows_nothing():
    assert _deal(["a", "b", "c"], 0, 2) == [("a", True), ("c", True)]
    assert _deal(["a", "b", "c"], 1, 2) == [("b", True), ("a", False)]
    assert _deal([], 0, 2) == [] and _deal([], 1, 2) == []
