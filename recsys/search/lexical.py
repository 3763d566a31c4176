"""The lexical channel: BM25 (``bm25s``) over each item's words and character trigrams.

bm25s keeps the index as a sparse matrix of precomputed BM25 weights, so a query costs the sum
of its tokens' columns and one partial sort, and the saved arrays are read mapped (workers share
them). Unknown query tokens are simply ignored, so any query answers, possibly with nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import bm25s
import numpy as np

from recsys.search.text import lexical_tokens

log = logging.getLogger(__name__)


class LexicalIndex:
    def __init__(self, bm25: bm25s.BM25, n_items: int):
        self.bm25 = bm25
        self.n_items = n_items

    @classmethod
    def build(cls, texts: list[str]) -> LexicalIndex:
        # bm25s refuses an empty document list and an empty vocabulary: a catalogue without text
        # still gets an index (of one placeholder token) that never matches a query.
        corpus = [lexical_tokens(text) or ["\x00"] for text in texts]
        bm25 = bm25s.BM25()
        bm25.index(corpus, show_progress=False)
        return cls(bm25, len(texts))

    def save(self, directory: Path) -> None:
        self.bm25.save(str(directory), show_progress=False)

    @classmethod
    def load(cls, directory: Path, n_items: int) -> LexicalIndex:
        return cls(bm25s.BM25.load(str(directory), mmap=True, show_progress=False), n_items)

    def search(self, query: str, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and BM25 scores of the best ``depth`` matches (only those sharing a token)."""
        tokens = lexical_tokens(query)
        if not tokens or self.n_items == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        scores = self.bm25.get_scores(tokens)
        depth = min(depth, len(scores))
        top = np.argpartition(-scores, depth - 1)[:depth]
        top = top[np.argsort(-scores[top], kind="stable")]
        top = top[scores[top] > 0]
        return top.astype(np.int64), scores[top].astype(np.float32)
