"""The search benchmark: its queries follow the stated rules, its file round-trips, its metrics are right."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from recsys.data.datasets import Dataset
from recsys.search import queries as queries_module
from recsys.search.quality import evaluate, markdown_table, query_scores, summarise
from recsys.search.queries import (
    Damage,
    Query,
    attribute_queries,
    damage_title,
    known_item_queries,
    misspell,
    read_queries,
    write_queries,
)

NO_DAMAGE = Damage(lowercase=0.0, drop_word=0.0, misspell=0.0, shuffle=0.0, punctuation=0.0)


@pytest.fixture
def catalogue() -> pd.DataFrame:
    """Seven items whose label answers are known by hand (two share the title "Cape Fear")."""
    return pd.DataFrame({
        "item_id": [1, 2, 3, 4, 5, 6, 7],
        "title": ["Toy Story", "GoldenEye", "Heat", "Cape Fear", "Cape Fear", "Sabrina", ""],
        "genres": ["Animation Children's Comedy", "Action Adventure Thriller", "Action Crime Thriller", "Thriller",
                   "Film-Noir Thriller", "Comedy Romance", "unknown"],
        "year": [1995.0, 1995.0, 1995.0, 1991.0, 1962.0, 1954.0, np.nan],
    })


def made_up_titles(n: int, words: int, seed: int = 0) -> pd.DataFrame:
    """Titles of distinct capitalised content words of 5-8 letters (none a stopword)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    titles = [" ".join("".join(rng.choice(letters, rng.integers(5, 9))).capitalize() for _ in range(words))
              for _ in range(n)]
    return pd.DataFrame({"item_id": np.arange(n), "title": titles})


def texts(found: list[Query]) -> list[str]:
    return [q.text for q in found]


# --- known-item queries ---------------------------------------------------------------------------


def test_known_item_queries_are_deterministic_under_a_seed():
    items = made_up_titles(200, 4)
    assert texts(known_item_queries(items, seed=3)) == texts(known_item_queries(items, seed=3))
    assert texts(known_item_queries(items, seed=3)) != texts(known_item_queries(items, seed=4))


def test_duplicate_titles_make_every_copy_relevant_and_empty_titles_no_query(catalogue):
    found = {q.qid: q for q in known_item_queries(catalogue, damage=NO_DAMAGE)}
    assert found["item/4"].relevant == found["item/5"].relevant == ["4", "5"]
    assert found["item/1"] == Query("item/1", "known_item", "Toy Story", ["1"], "Toy Story")
    assert "item/7" not in found and len(found) == 6


def test_word_drop_rate_is_as_configured():
    items = made_up_titles(600, 6)
    found = known_item_queries(items, seed=1, damage=replace(NO_DAMAGE, drop_word=0.2))
    kept = sum(len(q.text.split()) for q in found) / (6 * len(found))
    assert kept == pytest.approx(0.8, abs=0.03)
    assert all(set(q.text.split()) <= set(q.source.split()) for q in found)  # dropped, nothing else


def test_misspell_lowercase_and_shuffle_rates_are_as_configured():
    items = made_up_titles(800, 5)
    misspelt = known_item_queries(items, seed=2, damage=replace(NO_DAMAGE, misspell=0.15))
    changed = [(a, b) for q in misspelt for a, b in zip(q.source.split(), q.text.split(), strict=True) if a != b]
    assert len(changed) / (5 * len(misspelt)) == pytest.approx(0.15, abs=0.03)
    assert all(a[0] == b[0] and abs(len(a) - len(b)) <= 1 for a, b in changed)  # one edit, first letter spared
    lowered = known_item_queries(items, seed=2, damage=replace(NO_DAMAGE, lowercase=0.7))
    assert np.mean([q.text == q.source.lower() for q in lowered]) == pytest.approx(0.7, abs=0.05)
    shuffled = known_item_queries(items, seed=2, damage=replace(NO_DAMAGE, shuffle=0.2))
    assert all(sorted(q.text.split()) == sorted(q.source.split()) for q in shuffled)
    assert np.mean([q.text != q.source for q in shuffled]) == pytest.approx(0.2, abs=0.04)


def test_a_query_always_keeps_a_content_word():
    items = pd.DataFrame({"item_id": range(4), "title": ["Wood", "The Wood", "Return of the Jedi", "A Bug's Life"]})
    heavy = replace(NO_DAMAGE, drop_word=0.95)
    for seed in range(50):
        found = known_item_queries(items, seed=seed, damage=heavy)
        assert len(found) == 4
        assert found[0].text == "Wood"  # a one-word title is never dropped
        assert all(set(q.text.split()) - {"The", "of", "the", "A"} for q in found)


def test_punctuation_is_stripped_the_way_people_type_titles():
    rng = np.random.default_rng(0)
    damage = replace(NO_DAMAGE, punctuation=1.0, lowercase=1.0)
    assert damage_title("Empire Strikes Back, The", damage, rng) == "empire strikes back the"
    assert damage_title("Star Trek: First Contact (1996)", damage, rng) == "star trek first contact 1996"


def test_misspell_makes_exactly_one_edit_and_keeps_case():
    rng = np.random.default_rng(0)
    for _ in range(300):
        word = misspell("Wars", rng)
        assert word != "Wars" and word[0] == "W" and abs(len(word) - 4) <= 1


# --- attribute queries ----------------------------------------------------------------------------


def test_attribute_relevance_is_exact_on_a_hand_made_catalogue(catalogue):
    found = {q.source: q for q in attribute_queries(catalogue, max_queries=1000)}
    assert found["genre=Comedy"].relevant == ["1", "6"] and found["genre=Comedy"].text == "comedy"
    assert found["genre=Thriller year=1995"].relevant == ["2", "3"]
    assert found["genre=Thriller year=1995"].text == "thriller 1995"
    assert found["genre=Thriller decade=1990s"].relevant == ["2", "3", "4"]
    assert found["genre=Thriller decade=1990s"].text == "thriller 1990s"
    assert found["genre=Action genre=Thriller"].relevant == ["2", "3"]
    assert sorted(found["genre=Action genre=Thriller"].text.split()) == ["action", "thriller"]
    assert found["genre=Comedy genre=Romance"].relevant == ["6"]
    assert "genre=unknown" not in found and "genre=Action genre=Comedy" not in found  # no marker, no empty answer
    assert all(q.kind == "attribute" and q.text == q.text.lower() for q in found.values())


def test_attribute_queries_cap_relevance_and_sample_deterministically(catalogue):
    capped = {q.source for q in attribute_queries(catalogue, max_queries=1000, max_relevant=3)}
    assert "genre=Thriller" not in capped and "genre=Action" in capped
    few = attribute_queries(catalogue, seed=5, max_queries=8)
    assert len(few) == 8 and few == attribute_queries(catalogue, seed=5, max_queries=8)
    # Round-robin over the templates: 8 queries are 2 of each of the 4 templates.
    assert sorted(len(q.source.split()) for q in few) == [1, 1] + [2] * 6


def test_attribute_queries_fall_back_to_category_then_give_up(catalogue):
    by_category = catalogue[["item_id", "title"]].assign(category=["Comedy", "Action", "Action", "Thriller",
                                                                    "Film-Noir", "Comedy", None])
    found = {q.source: q.relevant for q in attribute_queries(by_category)}
    assert found == {"genre=Action": ["2", "3"], "genre=Comedy": ["1", "6"], "genre=Film-Noir": ["5"],
                     "genre=Thriller": ["4"]}
    assert attribute_queries(catalogue[["item_id", "title"]]) == []


# --- the file -------------------------------------------------------------------------------------


def test_write_then_read_round_trips_and_leaves_no_temporary_file(tmp_path, catalogue):
    found = known_item_queries(catalogue) + attribute_queries(catalogue)
    path = tmp_path / "queries.jsonl"
    write_queries(path, found, {"seed": 0, "damage": {"drop_word": 0.2}})
    assert read_queries(path) == (found, {"seed": 0, "damage": {"drop_word": 0.2}})
    assert json.loads(path.read_text().splitlines()[0]) == {"meta": {"seed": 0, "damage": {"drop_word": 0.2}}}
    assert [p.name for p in tmp_path.iterdir()] == ["queries.jsonl"]


@pytest.mark.parametrize("bad", ["{not json", '{"qid": "x", "kind": "known_item", "text": "a"}',
                                 '{"qid": "x", "kind": "typo", "text": "a", "relevant": [], "source": "a"}',
                                 '{"qid": "x", "kind": "attribute", "text": "a", "relevant": [1], "source": "a"}'])
def test_a_malformed_line_is_named(tmp_path, catalogue, bad):
    path = tmp_path / "queries.jsonl"
    write_queries(path, known_item_queries(catalogue)[:2], {})
    path.write_text(path.read_text() + bad + "\n")
    with pytest.raises(ValueError, match=r"queries\.jsonl:4: malformed"):
        read_queries(path)


def test_the_cli_writes_both_kinds_with_its_recipe(tmp_path, monkeypatch, catalogue):
    interactions = pd.DataFrame({"user_id": [1, 1], "item_id": [1, 2], "timestamp": [1, 2]})
    monkeypatch.setattr(queries_module, "load_dataset", lambda name, data_dir: Dataset("tiny", interactions, catalogue))
    out = tmp_path / "q.jsonl"
    assert queries_module.main(["--dataset", "tiny", "--out", str(out), "--seed", "3"]) == 0
    found, meta = read_queries(out)
    assert meta["seed"] == 3 and meta["damage"] == vars(Damage()) and meta["dataset"] == "tiny"
    assert meta["counts"] == {"known_item": 6, "attribute": len(found) - 6} and meta["counts"]["attribute"] > 0
    with pytest.raises(SystemExit):
        queries_module.main(["--dataset", "tiny", "--out", str(out), "--seed", "three"])


# --- metrics --------------------------------------------------------------------------------------


def q(relevant: list[str], kind: str = "known_item") -> Query:
    return Query("x", kind, "x", relevant, "x")


def test_known_answers_for_mrr_ndcg_and_hit_rate():
    scores = query_scores([["9", "1", "8"], ["7", "8"], ["1", "5", "2"], ["1", "1", "1"], [str(i) for i in range(20)]],
                          [q(["1"]), q(["1"]), q(["1", "2"]), q(["1", "3"]), q(["15"])], k=10)
    assert scores["MRR@10"] == pytest.approx([0.5, 0.0, 1.0, 1.0, 0.0])
    assert scores["HR@10"].tolist() == [1.0, 0.0, 1.0, 1.0, 0.0]
    ideal_two = 1 + 1 / np.log2(3)
    assert scores["NDCG@10"] == pytest.approx([1 / np.log2(3), 0.0, (1 + 1 / np.log2(4)) / ideal_two,
                                               1 / ideal_two, 0.0])  # a repeated hit counts once


def test_ndcg_ideal_is_capped_at_k_relevant_items():
    relevant = [str(i) for i in range(50)]
    assert query_scores([relevant[:10]], [q(relevant)], k=10)["NDCG@10"] == pytest.approx([1.0])


def test_evaluate_batches_and_splits_by_kind():
    found = [q(["1"]), q(["2"], "attribute"), q(["3"]), q(["4"], "attribute"), q(["5"])]
    found = [replace(query, text=f"t{i}") for i, query in enumerate(found)]
    answers = {"t0": [1], "t1": ["9", "2"], "t2": ["9"], "t3": ["4"], "t4": ["5"]}
    batches = []

    def search(texts: list[str], k: int) -> list[list[str]]:
        batches.append(len(texts))
        return [answers[t] for t in texts]

    scores = evaluate(search, found, k=10, batch=2)
    assert batches == [2, 2, 1]
    assert scores["known_item"]["MRR@10"].tolist() == [1.0, 0.0, 1.0]  # int ids are read as strings
    assert scores["attribute"]["MRR@10"].tolist() == [0.5, 1.0]


def test_summarise_pairs_variants_over_the_same_queries():
    rng = np.random.default_rng(0)
    reference = (rng.random(400) < 0.3).astype(float)
    better = np.maximum(reference, (rng.random(400) < 0.2).astype(float))
    rows = {row["variant"]: row for row in summarise({"ref": reference, "same": reference.copy(),
                                                      "better": better}, reference="ref")}
    low, high = rows["same"]["delta_interval"]
    assert low <= 0 <= high and rows["same"]["ratio"] == 1.0
    assert rows["better"]["delta_interval"][0] > 0 and rows["better"]["ratio_interval"][0] > 1
    assert rows["ref"]["interval"][0] < reference.mean() < rows["ref"]["interval"][1]
    assert summarise({"ref": reference, "better": better}, "ref") == summarise({"ref": reference, "better": better},
                                                                                "ref")  # seeded
    table = markdown_table(list(rows.values()), "NDCG@10")
    assert table.splitlines()[0] == "| variant | NDCG@10 [95% CI] | Δ vs ref [95% CI] | × ref [95% CI] |"
    assert "| ref |" in table and "(reference)" in table and "+0." in table


def test_summarise_refuses_unpaired_variants():
    with pytest.raises(ValueError, match="same queries"):
        summarise({"a": np.zeros(3), "b": np.zeros(4)}, "a")
    with pytest.raises(ValueError, match="reference"):
        summarise({"a": np.zeros(3)}, "b")
