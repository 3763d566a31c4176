"""Pruning, low-rank factorisation and the rule that decides whether a technique is served."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compression.techniques import damaged, factorise, pick_published
from recsys.evaluate.paired import PairedDecision, Resampler, UserScores


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


def row(name, size, p50):
    return {"name": name, "bytes": size, "latency_p50_ms": p50}


def user_scores(rng, n_users=900, hit_rate=0.3, noise=0.0, base=None):
    """Per-user NDCG-like scores: ``base`` (or fresh hits) with a share ``noise`` of users re-drawn."""
    values = base.sums.copy() if base is not None else (rng.random(n_users) < hit_rate) * rng.uniform(0.3, 1, n_users)
    redraw = rng.random(n_users) < noise
    values[redraw] = (rng.random(redraw.sum()) < hit_rate * 0.4) * rng.uniform(0.3, 1, redraw.sum())
    return UserScores(values, np.ones(n_users))


def decider(scores, threshold=0.97):
    resampler = Resampler.over(len(next(iter(scores.values())).sums), seed=0)
    return lambda a, b: PairedDecision.of(scores[a], scores[b], threshold, resampler)


def test_a_technique_is_served_when_not_shown_worse_and_cheaper():
    rng = np.random.default_rng(0)
    base = user_scores(rng)
    scores = {"compressed": base, "compressed-lowrank": user_scores(rng, base=base, noise=0.02),
              "compressed-pruned": user_scores(rng, base=base, noise=0.8)}
    rows = [row("compressed", 1000, 1.0), row("compressed-lowrank", 850, 0.85), row("compressed-pruned", 1000, 1.0)]
    chosen, why = pick_published(rows, ("compressed-pruned", "compressed-lowrank"), decider(scores))
    assert chosen == "compressed-lowrank" and why["compressed-lowrank"].startswith("kept")
    assert why["compressed-pruned"].startswith("not kept") and "shown worse" in why["compressed-pruned"]
    slower = [row("compressed", 1000, 1.0), row("compressed-lowrank", 850, 1.2)]
    chosen, why = pick_published(slower, ("compressed-lowrank",), decider(scores))
    assert chosen == "compressed" and "p50" in why["compressed-lowrank"]
    # As good, but a few per cent cheaper is within this machine's noise: not worth a change.
    marginal = [row("compressed", 1000, 1.0), row("compressed-lowrank", 985, 0.97)]
    chosen, why = pick_published(marginal, ("compressed-lowrank",), decider(scores))
    assert chosen == "compressed" and "not 10% cheaper" in why["compressed-lowrank"]


def test_among_equal_techniques_the_cheapest_is_served():
    rng = np.random.default_rng(1)
    base = user_scores(rng)
    scores = {name: user_scores(rng, base=base, noise=0.01) for name in ("compressed-pq", "compressed-lowrank")}
    scores["compressed"] = base
    rows = [row("compressed", 1000, 1.0), row("compressed-lowrank", 850, 0.85), row("compressed-pq", 400, 0.95)]
    chosen, why = pick_published(rows, ("compressed-pq", "compressed-lowrank"), decider(scores))
    assert chosen == "compressed-pq" and "cheaper" in why["compressed-lowrank"]


def test_a_technique_that_passes_the_gate_is_served_when_the_plain_pick_misses_it():
    rng = np.random.default_rng(2)
    teacher = user_scores(rng)
    scores = {"teacher-fp32": teacher, "compressed": user_scores(rng, base=teacher, noise=0.5),
              "compressed-lowrank": user_scores(rng, base=teacher, noise=0.01)}
    rows = [row("teacher-fp32", 5000, 2.0), row("compressed", 1000, 1.0),
            row("compressed-lowrank", 990, 1.05)]  # not 10 % cheaper: no win over plain compressed on its own
    decide = decider(scores)
    assert decide("compressed", "teacher-fp32").shown_worse
    assert pick_published(rows, ("compressed-lowrank",), decide)[0] == "compressed"
    chosen, why = pick_published(rows, ("compressed-lowrank",), decide, gate_reference="teacher-fp32")
    assert chosen == "compressed-lowrank" and "misses the gate" in why["compressed-lowrank"]
    # Nothing passes: the plain pick stands and the gate refuses it.
    scores["compressed-lowrank"] = user_scores(rng, base=teacher, noise=0.6)
    assert pick_published(rows, ("compressed-lowrank",), decider(scores), gate_reference="teacher-fp32")[0] == \
        "compressed"


@pytest.fixture
def tiny_student():
    from compression.students import Student
    from recsys.models.ranker import Ranker, RankerConfig

    torch.manual_seed(0)
    return Student("student", towers=object(), ranker=Ranker(RankerConfig(dim=8, n_dense=3, width=16)),
                   tables=None, summary={})


def test_a_damaged_student_differs_only_where_it_was_damaged(tiny_student):
    damaged_student = damaged(tiny_student, noise=1.0, seed=3)
    again = damaged(tiny_student, noise=1.0, seed=3)
    before = dict(tiny_student.ranker.named_parameters())
    changed = [name for name, p in damaged_student.ranker.named_parameters()
               if not torch.equal(p, before[name])]
    assert changed and all(name.endswith("weight") for name in changed)
    assert all(torch.equal(p, q) for p, q in zip(damaged_student.ranker.parameters(), again.ranker.parameters(),
                                                  strict=True))  # seeded
    assert damaged_student.towers is tiny_student.towers and damaged_student.summary["damaged"]["noise"] == 1.0


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
