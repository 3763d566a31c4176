"""Search encoders from a tiny random teacher (MiniLM's layout): export, int8, the static student,
and the search section that measures and gates them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from compression.search import ENCODERS, SearchBuildConfig, catalogue_texts, search_section
from compression.text_encoder import StaticConfig, distil_static, export_teacher, load_teacher, quantize_encoder
from recsys.data.idmap import IdMap
from recsys.search.encoder import load_text_encoder
from recsys.search.engine import load_search

WORDS = ["red", "blue", "green", "space", "river", "night", "story", "island", "king", "city", "summer", "war"]
GENRES = ["Comedy", "Drama", "Action", "Romance"]


def catalogue(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    titles = [f"{WORDS[a].title()} {WORDS[b].title()} {i}" for i, (a, b) in
              enumerate(rng.integers(0, len(WORDS), (n, 2)))]
    genres = [" ".join(sorted(set(rng.choice(GENRES, 2)))) for _ in range(n)]
    return pd.DataFrame({"item_id": np.arange(n), "title": titles, "genres": genres,
                         "year": rng.integers(1990, 1996, n).astype(float)})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from compression.text_encoder import tiny_teacher

    root = tmp_path_factory.mktemp("text")
    items = catalogue()
    item_map = IdMap(items["item_id"].to_numpy())
    texts = catalogue_texts(items, item_map)
    teacher_dir = tiny_teacher([*texts, *(t.lower() for t in texts)], root / "teacher")
    return root, items, item_map, texts, load_teacher(teacher_dir)


def test_exported_teacher_matches_torch_and_int8_is_batch_independent(built):
    root, _, _, texts, teacher = built
    record = export_teacher(teacher, root / "fp32", texts)
    assert record["onnx_max_abs_diff"] < 1e-4
    fp32 = load_text_encoder(root / "fp32")
    np.testing.assert_allclose(fp32(texts[:4]), teacher.encode(texts[:4]), atol=1e-4)
    quantize_encoder(root / "fp32", root / "int8")
    int8 = load_text_encoder(root / "int8")
    assert int8.model.per_row  # dynamic int8: each text runs alone, unpadded
    batch = int8(texts[:5])
    np.testing.assert_allclose(batch[2], int8([texts[2]])[0], atol=1e-6)
    cosine = (batch * fp32(texts[:5])).sum(1)
    assert cosine.min() > 0.9
    assert json.loads((root / "int8" / "encoder.json").read_text())["name"].endswith("int8")


def test_static_student_learns_the_teacher(built):
    root, _, _, texts, teacher = built
    record = distil_static(teacher, texts, root / "static", StaticConfig(epochs=4))
    losses = record["cosine_loss"]
    assert losses[-1] < losses[0]
    student = load_text_encoder(root / "static")
    assert student.table.dtype == np.int8
    agreement = (student(texts[:10]) * teacher.encode(texts[:10])).sum(1)
    assert agreement.mean() > 1 - 2 * losses[-1] - 0.05
    assert not student(["\u2603"]).any()  # a text without a known token has no direction


def test_search_section_scores_every_variant_and_gates_an_encoder(built):
    root, items, item_map, texts, _ = built
    section = search_section(texts, items, item_map, root / "section",
                             SearchBuildConfig(teacher_dir=root / "teacher", static=StaticConfig(epochs=2),
                                               latency_queries=20), threshold=0.3)
    names = [row["name"] for row in section["rows"]]
    assert names[0] == "bm25" and {f"hybrid {name}" for name in ENCODERS} <= set(names)
    assert section["served"] in ENCODERS
    assert section["queries"]["known_item"] == len(items)
    for row in section["rows"]:
        low, high = row["known_item"]["interval"]
        assert 0 <= low <= row["known_item"]["mean"] <= high <= 1
    # The titles themselves are distinctive: BM25 on lightly damaged titles finds most of them.
    assert section["rows"][0]["known_item"]["mean"] > 0.5
    served = load_search(section["dirs"][section["served"]], len(texts))
    assert served.config.lexical_weight == section["fusion_tuning"][section["served"]]["lexical_weight"]
