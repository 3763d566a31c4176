"""The personal-search benchmark's queries: the next item's genre and year, labelled with that item."""

from __future__ import annotations

import numpy as np
import pandas as pd

from benchmarks.search_personal import next_item_queries

ITEMS = pd.DataFrame({"item_id": [1, 2, 3], "title": ["A", "B", "C"],
                      "genres": ["Comedy Romance", "unknown", "Drama"], "year": [1995.0, 1990.0, np.nan]})


def test_one_genre_year_query_per_user_labelled_with_their_next_item():
    queries = next_item_queries(ITEMS, np.array(["u1", "u2", "u3", "u4"]), np.array(["1", "2", "3", "9"]), seed=0)
    assert [q.qid for q in queries] == ["u1", "u3"]  # no genre (unknown) or not in the catalogue: skipped
    assert queries[0].text in {"comedy 1995", "romance 1995"} and queries[0].relevant == ["1"]
    assert queries[1].text == "drama"  # no year: the genre alone
    again = next_item_queries(ITEMS, np.array(["u1", "u3"]), np.array(["1", "3"]), seed=0)
    assert [q.text for q in again] == [q.text for q in queries]
