"""Pruning, low-rank factorisation and the rule that decides whether a technique is served."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compression.techniques import KEEP_QUALITY, factorise, pick_published


def test_factorise_reproduces_a_low_rank_layer_and_refuses_when_not_smaller():
    torch.manual_seed(0)
    layer = nn.Linear(64, 48)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(48, 4) @ torch.randn(4, 64))  # rank 4
    thin = factorise(layer, energy=0.999)
    assert thin is not None and thin[0].out_features <= 4
    x = torch.randn(5, 64)
    assert torch.allclose(thin(x), layer(x), atol=1e-4)
    full_rank = nn.Linear(8, 8)
    assert factorise(full_rank, energy=0.999) is None  # two 8 x r layers would not be smaller


def row(name, ndcg, size, p50):
    return {"name": name, "NDCG@10": ndcg, "bytes": size, "latency_p50_ms": p50}


def test_a_technique_is_served_only_when_it_wins_on_every_count():
    base = row("compressed", 0.14, 1000, 1.0)
    smaller = row("compressed-lowrank", 0.14 * KEEP_QUALITY, 900, 0.9)
    worse = row("compressed-pruned", 0.10, 1000, 1.0)
    chosen, why = pick_published([base, smaller, worse], ("compressed-pruned", "compressed-lowrank"))
    assert chosen == "compressed-lowrank" and why["compressed-lowrank"].startswith("kept")
    assert why["compressed-pruned"].startswith("not kept") and "NDCG@10" in why["compressed-pruned"]
    slower = row("compressed-lowrank", 0.15, 900, 1.2)
    chosen, why = pick_published([base, slower], ("compressed-lowrank",))
    assert chosen == "compressed" and "p50" in why["compressed-lowrank"]


def test_a_technique_that_passes_the_gate_is_served_when_the_plain_pick_misses_it():
    teacher = row("teacher-fp32", 0.0900, 5000, 2.0)
    base = row("compressed", 0.0869, 1000, 1.0)
    lowrank = row("compressed-lowrank", 0.0909, 990, 1.1)  # better but slower: not a win on every count
    pruned = row("compressed-pruned", 0.0855, 1000, 1.0)
    rows, candidates = [teacher, base, lowrank, pruned], ("compressed-pruned", "compressed-lowrank")
    assert pick_published(rows, candidates)[0] == "compressed"
    chosen, why = pick_published(rows, candidates, threshold=0.97)
    assert chosen == "compressed-lowrank" and "misses the gate" in why["compressed-lowrank"]
    assert why["compressed-pruned"].startswith("not kept")
    assert pick_published(rows, candidates, threshold=0.9)[0] == "compressed"  # the plain pick passes
    # Nothing reaches the bar: the plain pick stands and the gate refuses it.
    assert pick_published(rows, candidates, threshold=1.05)[0] == "compressed"


def test_students_do_without_the_content_overlap_features_by_default():
    from compression.compress import resolve_disabled
    from recsys.pipeline.contract import ModelSpecError
    from tests.fixtures.tables import hand_tables

    tables = hand_tables()
    assert resolve_disabled("auto", tables) == "affinity:category,affinity:genres,token_overlap"
    assert resolve_disabled("", tables) == ""  # the teacher's full set
    assert resolve_disabled("cooc_recent, token_overlap", tables) == "cooc_recent,token_overlap"
    assert resolve_disabled("auto", None) == ""  # no ranker, nothing to drop
    with pytest.raises(ModelSpecError, match="no_such_feature"):
        resolve_disabled("no_such_feature", tables)
