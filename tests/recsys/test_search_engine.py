"""The search engine's parts on hand-made data: tokens, BM25, fusion, exclusion, the user's order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.data.idmap import IdMap
from recsys.index import build_index
from recsys.search.engine import SearchConfig, SearchEngine, fuse, fuse_channels, load_search, relative
from recsys.search.lexical import LexicalIndex
from recsys.search.text import item_texts, lexical_tokens, normalise_query

TITLES = ["Star Wars", "Star Trek", "Toy Story", "Empire Strikes Back, The", "Pretty Woman", "Godfather, The"]


class BagEncoder:
    """A transparent encoder: one dimension per known word (unit rows), zero for unknown text."""

    def __init__(self, words: list[str]):
        self.words = {word: i for i, word in enumerate(words)}
        self.dim = len(words)

    def __call__(self, texts):
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                if word in self.words:
                    out[row, self.words[word]] = 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


@pytest.fixture(scope="module")
def engine():
    words = sorted({w for t in TITLES for w in t.lower().replace(",", "").split()})
    encoder = BagEncoder(words)
    vectors = encoder([t.replace(",", "") for t in TITLES])
    return SearchEngine(LexicalIndex.build(TITLES), encoder, build_index(vectors, "Flat"), SearchConfig())


def test_lexical_tokens_are_words_and_trigrams():
    assert lexical_tokens("Star!") == ["=star", "#st", "sta", "tar", "ar#"]
    assert lexical_tokens("  ") == []


def test_item_texts_follow_the_item_map_and_say_each_label_once():
    items = pd.DataFrame({"item_id": [20, 10], "title": ["B", "A"], "category": ["Comedy", "Drama"],
                          "genres": ["Comedy Romance", "Drama"], "year": [1995.0, np.nan]})
    texts = item_texts(items, IdMap(np.array([10, 20, 30])), 3)
    assert texts == ["A. Drama", "B. Comedy Romance. 1995", ""]


def test_bm25_finds_a_misspelt_title():
    index = LexicalIndex.build(TITLES)
    rows, scores = index.search("empir strikes", 3)
    assert rows[0] == 3 and scores[0] > scores[1]
    assert len(index.search("zzzz", 3)[0]) == 0


def test_fusion_adds_weighted_scores_and_lexical_is_relative():
    lexical = (np.array([1, 2]), np.array([4.0, 2.0], np.float32))
    semantic = (np.array([2, 3]), np.array([0.5, 0.25], np.float32))
    np.testing.assert_allclose(relative(lexical)[1], [1.0, 0.5])
    fused = fuse_channels(lexical, semantic, 0.8)
    assert fused == pytest.approx({1: 0.8, 2: 0.8 * 0.5 + 0.2 * 0.5, 3: 0.2 * 0.25})
    assert fuse([((np.array([7]), np.array([2.0])), 0.5)]) == {7: 1.0}


def test_hybrid_answers_titles_and_channels_can_be_switched_off(engine):
    (rows, scores), = engine.search_many(["star wars"], 3)
    assert rows[0] == 0 and np.all(np.diff(scores) <= 0)
    bm25, semantic = engine.with_config(semantic=False), engine.with_config(lexical=False)
    assert bm25.lexical_weight == 1.0 and semantic.lexical_weight == 0.0
    assert semantic.search_many(["godfather the"], 1)[0][0][0] == 5
    # A misspelling no word matches is still found through its trigrams, by BM25 alone.
    assert bm25.search_many(["godfathr"], 1)[0][0][0] == 5


def test_exclude_and_k_are_respected(engine):
    (rows, _), = engine.search_many(["star"], 5, exclude=[np.array([0])])
    assert 0 not in rows and 1 in rows
    assert len(engine.search_many(["star"], 1)[0][0]) == 1


def test_any_query_answers(engine):
    for query in ["∅ ☃", "1234", "x" * 256]:
        rows, scores = engine.search_many([normalise_query(query)], 5)[0]
        assert len(rows) == len(scores) <= 5


def test_a_user_reorders_near_ties_but_not_the_text(engine):
    item_vectors = np.eye(len(TITLES), dtype=np.float32)
    likes_trek, likes_wars = item_vectors[1:2], item_vectors[0:1]
    personal = np.array([True])
    trek = engine.search_many(["star"], 2, user_vectors=likes_trek, personal=personal, item_vectors=item_vectors)
    wars = engine.search_many(["star"], 2, user_vectors=likes_wars, personal=personal, item_vectors=item_vectors)
    assert trek[0][0].tolist() == [1, 0] and wars[0][0].tolist() == [0, 1]
    # The text still decides: a user's favourite that does not match the words stays out.
    likes_toy = item_vectors[2:3]
    toy = engine.search_many(["star"], 2, user_vectors=likes_toy, personal=personal, item_vectors=item_vectors)
    assert 2 not in toy[0][0]


def test_load_search_refuses_a_directory_without_an_index(tmp_path):
    with pytest.raises(FileNotFoundError, match="search.json"):
        load_search(tmp_path, 3)


def test_an_answer_does_not_depend_on_its_batch(engine):
    shallow = engine.with_config(depth=2)  # exclusions deepen a query's own search, not its batch's
    alone = shallow.search_many(["star"], 2)
    batched = shallow.search_many(["star", "the"], 2, exclude=[np.zeros(0, np.int64), np.arange(4)])
    assert alone[0][0].tolist() == batched[0][0].tolist()
    np.testing.assert_allclose(alone[0][1], batched[0][1])
