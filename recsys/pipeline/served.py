"""The object the HTTP service holds: one bundle answering requests by user id or item id.

`ServingModel` wraps the bundle's `Pipeline` (wired by `recsys.bundle.load`) with what does not
depend on the request: the known users' tower vectors over their stored history (the same ONNX
session on the same inputs, so served == measured), their history rows and, for the ranker, the
features' user side, cached on first use. A request then costs one ANN search, the feature
builder and the ranker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recsys.bundle.content import BundleContent
from recsys.bundle.manifest import Manifest
from recsys.data.history import History, csr_rows
from recsys.index import search
from recsys.pipeline.browse import UserDirectory, closest_in_history, history_newest_first
from recsys.pipeline.onnx import OnnxUserEncoder
from recsys.pipeline.ranker_features import LAST_TIMESTAMP, TIMESTAMP, UserSide, stack_user_sides, user_side
from recsys.pipeline.recommend import Pipeline, PipelineRecommender, append_items, items_csr, request_rows
from recsys.pipeline.request import stack_rows, supplied_rows
from recsys.pipeline.retrieve import drop_seen, history_inputs
from recsys.search.engine import SearchEngine

log = logging.getLogger(__name__)

PRECOMPUTE_BATCH = 4096
USER_CACHE = 50_000  # known users whose history rows and feature user side are kept (a few kB each)


class UnknownItemError(KeyError):
    """An item id the bundle has never seen (a 404 at the HTTP edge)."""


@dataclass(frozen=True)
class Ask:
    """One /recommend request resolved against a bundle: what `ServingModel.recommend_many` batches."""

    user: int  # row in the bundle's users, -1 unknown
    rows: History  # one history row (stored, with the real-time overlay appended, or supplied)
    k: int
    exclude: np.ndarray  # item indices never to return
    context: dict[str, float]  # request time, the user's last time, the dataset's context columns


@dataclass(frozen=True)
class SearchAsk:
    """One /search request resolved against a bundle: what `ServingModel.search_many` batches."""

    query: str
    user: int  # row in the bundle's users, -1 unknown or none
    rows: History | None  # the user's history row (None: no user sent)
    k: int
    exclude: np.ndarray  # item indices never to return

    @property
    def personal(self) -> bool:
        """Re-ranked by the user's tower output: a user was sent and their history (stored plus
        real-time) is not empty."""
        rows = self.rows
        return rows is not None and bool(rows.seen.nnz or (rows.recent >= 0).any())


class NoSearchIndex(LookupError):
    """The served bundle was built without a search index (its catalogue has no text)."""

    def __init__(self, version: str):
        super().__init__(f"bundle {version} has no search index: its catalogue has no text column to search")


@dataclass
class Recommendation:
    items: list
    scores: list[float]
    titles: list[str | None] | None
    fallback: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Explanation:
    """Why ``item_id`` may suit a user: their history items closest to it, best first (empty when
    the bundle does not know the item or the user has no history)."""

    item_id: object  # as asked
    because: Recommendation


class CachedUserEncoder:
    """Known users' vectors computed once over their stored history; other rows go through the tower.

    A row is served from the cache only when its tower input is the stored history's (a caller
    may supply another history for a known user), so cached answers equal recomputed ones."""

    def __init__(self, encoder: OnnxUserEncoder, vectors: np.ndarray, stored_recent: np.ndarray, n_users: int):
        self.encoder = encoder
        self.vectors = vectors
        self.stored_recent = stored_recent
        self.n_users = n_users

    def __call__(self, users1: np.ndarray, history1: np.ndarray) -> np.ndarray:
        cached = users1 > 0
        known = users1[cached] - 1
        _, stored1 = history_inputs(known, self.stored_recent[known], history1.shape[1], self.n_users)
        cached[cached] = (stored1 == history1[cached]).all(1)
        if cached.all():
            return self.vectors[users1 - 1]
        out = self.encoder(users1, history1)
        out[cached] = self.vectors[users1[cached] - 1]
        return out


class BoundedCache:
    """A dict of at most ``max_items`` entries; the oldest goes first (cheap, and hot keys return)."""

    def __init__(self, max_items: int):
        self.max_items = max_items
        self.entries: dict = {}

    def get(self, key, make):
        entry = self.entries.get(key)
        if entry is None:
            if len(self.entries) >= self.max_items:
                del self.entries[next(iter(self.entries))]
            entry = self.entries[key] = make()
        return entry


class CachedUserSide:
    """The ranking features' user side of known users, computed on first use and kept (bounded).

    A row qualifies when it is the user's stored history: a caller that appended new items to
    the history gets a fresh computation. A batch (the server's batcher) stacks one side per row,
    so a request's features do not depend on the requests batched with it."""

    def __init__(self, pipeline: Pipeline, max_users: int = USER_CACHE):
        self.pipeline = pipeline
        self.cache = BoundedCache(max_users)

    def __call__(self, users: np.ndarray, rows: History) -> UserSide:
        counts = np.diff(rows.seen.indptr)
        sides = []
        for row, user in enumerate(users.tolist()):
            if self._is_stored(user, rows.recent[row], int(counts[row])):
                sides.append(self.cache.get(user, lambda row=row: self._compute(self._one(rows, row))))
            else:
                sides.append(self._compute(self._one(rows, row)))
        return stack_user_sides(sides, self.pipeline.feature_tables)

    @staticmethod
    def _one(rows: History, row: int) -> History:
        """Row ``row`` alone (the fast gather: scipy's own indexing costs ~100 µs per call)."""
        return rows if len(rows.recent) == 1 else History(csr_rows(rows.seen, np.array([row])),
                                                          rows.recent[row:row + 1])

    def _is_stored(self, user: int, recent: np.ndarray, n_seen: int) -> bool:
        """Whether a row (its recent items, its seen count) is ``user``'s stored history; read from
        the batch's arrays, so a cache hit never builds the row."""
        stored = self.pipeline.history
        if stored is None or not 0 <= user < len(stored.recent):
            return False
        # Rows are left-padded with -1 to the batch's widest: compare the items, not the padding.
        kept = stored.recent[user]
        return bool(n_seen == stored.seen.indptr[user + 1] - stored.seen.indptr[user]
                    and np.array_equal(recent[recent >= 0], kept[kept >= 0]))

    def _compute(self, one: History) -> UserSide:
        return user_side(self.pipeline.feature_tables, one, self.pipeline.item_vectors)


def cache_known_users(pipeline: Pipeline, vectors: np.ndarray | None = None) -> None:
    """Answer known users the way the server does: their tower outputs over their stored history
    (``vectors``, as the bundle stores them, or computed now), the features' user side cached on
    first use."""
    if isinstance(pipeline.encode_users, CachedUserEncoder):
        return
    encoder = pipeline.encode_users
    if vectors is None:
        vectors = tower_outputs(encoder, pipeline.history.recent, pipeline.history_len, pipeline.n_users)
    pipeline.encode_users = CachedUserEncoder(encoder, vectors, pipeline.history.recent, pipeline.n_users)
    if pipeline.has_ranker:
        pipeline.user_side = CachedUserSide(pipeline)


def tower_outputs(encoder: OnnxUserEncoder, recent: np.ndarray, history_len: int, n_users: int) -> np.ndarray:
    """[users, D] the user tower over every stored history row, in batches."""
    users = np.arange(len(recent))
    parts = []
    for start in range(0, len(users), PRECOMPUTE_BATCH):
        batch = users[start:start + PRECOMPUTE_BATCH]
        parts.append(encoder(*history_inputs(batch, recent[batch], history_len, n_users)))
    return np.vstack(parts).astype(np.float32) if parts else np.zeros((0, 1), np.float32)


class ServingModel:
    """One loaded bundle answering requests. ``open_pipeline(threads=, precompute_users=)`` wires
    the bundle's stages into a `Pipeline` (`recsys.bundle.load` passes it: only the bundle
    package knows the bundle's files)."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, content: BundleContent,
                 open_pipeline: Callable[..., Pipeline], threads: int = 1, precompute_users: bool = True,
                 open_search: Callable[..., SearchEngine] | None = None):
        self.bundle_dir = bundle_dir
        self.manifest = manifest
        self.content = content
        self.runtime = content.runtime
        self._open_pipeline = open_pipeline
        self.pipeline = open_pipeline(threads=threads, precompute_users=precompute_users)
        self.n_candidates = int(self.runtime.get("n_candidates", 200))
        self.titles = self._title_array(content)
        self.search_engine = open_search(threads=threads) if open_search is not None else None
        self._rows = BoundedCache(USER_CACHE)  # key -1: the unknown user's empty rows
        self.user_directory = UserDirectory(content.users, content.history.seen)
        self._recent_width = max(content.history.recent.shape[1], self.pipeline.history_len)
        self._loaded_at = time.monotonic()

    def cache_known_users(self) -> None:
        """Switch a model loaded with ``precompute_users=False`` to the server's caches."""
        cache_known_users(self.pipeline, self.content.user_vectors)

    @property
    def version(self) -> str:
        return self.manifest.bundle_version

    @staticmethod
    def _title_array(content: BundleContent) -> np.ndarray | None:
        if content.titles is None:
            return None
        titles = np.full(len(content.items), None, dtype=object)
        titles[content.titles.index.to_numpy()] = content.titles.to_numpy()
        return titles

    def item_index(self, item_ids) -> np.ndarray:
        if len(item_ids) == 0:
            return np.zeros(0, dtype=np.int64)
        return self.content.items.to_index(list(item_ids), missing=-1)

    def has_item(self, item_id) -> bool:
        return bool(self.item_index([item_id])[0] >= 0)

    def _result(self, ids: np.ndarray, scores: np.ndarray, fallback: str | None, timings: dict) -> Recommendation:
        keep = ids >= 0
        ids, scores = ids[keep], scores[keep]
        titles = None if self.titles is None else [self.titles[i] for i in ids]
        external = self.content.items.to_external(ids).tolist()
        timings_ms = {stage: seconds * 1e3 for stage, seconds in timings.items()}
        return Recommendation(external, [float(s) for s in scores], titles, fallback, timings_ms)

    @property
    def context_columns(self) -> tuple[str, ...]:
        """The dataset context columns the ranker reads (request parameters)."""
        tables = self.pipeline.feature_tables
        return tuple(tables.context_columns) if tables is not None else ()

    @property
    def real_time(self) -> bool:
        return bool(self.runtime.get("real_time", False))

    def default_time(self) -> float | None:
        """A request without a time happens now: the bundle's data cutoff plus the time since it was
        loaded (never a gap of decades between a log's last event and the wall clock)."""
        cutoff = self.runtime.get("data", {}).get("cutoff")
        return None if cutoff is None else float(cutoff) + (time.monotonic() - self._loaded_at)

    def recommend(self, user_id, k: int, exclude=(), at: float | None = None, context: dict | None = None,
                  history: Sequence[tuple] | None = None, since: Sequence[tuple] = ()) -> Recommendation:
        """Top-k for one user id: `ask` then `recommend_many` of that one request (the batcher's path)."""
        return self.recommend_many([self.ask(user_id, k, exclude, at, context, history, since)])[0]

    def ask(self, user_id, k: int, exclude=(), at: float | None = None, context: dict | None = None,
            history: Sequence[tuple] | None = None, since: Sequence[tuple] = ()) -> Ask:
        """One request resolved against the bundle (unknown user: -1 row, popular fallback unless a
        history is known), ready to be batched with others.

        ``at`` is the request time in the log's unit (default `default_time`, then without the
        user's time gap: see below); ``context`` the
        dataset's context columns; ``history`` ``[(item_id, timestamp or None), ...]`` oldest
        first replaces the stored history (unknown items are ignored); ``since``, the same
        shape, is what the user did after the bundle was built (the server's real-time
        overlay): appended to the stored history, and excluded from the answer."""
        user = -1 if user_id is None else int(self.content.users.index_of(user_id))
        excluded = self.item_index(exclude)
        if history is None:
            rows, last = self._stored_rows(user, since)
        else:
            items = self.item_index([item for item, _ in history])
            rows = supplied_rows(items[items >= 0], self.pipeline.n_items, self._recent_width)
            times = [stamp for _, stamp in history if stamp is not None]
            last = max(times) if times else -1.0
        # Without a request time the server's "now" is a proxy (data cutoff + time since load); a
        # gap measured against it would tell the ranker a user last seen months before the cutoff
        # is returning after a break (ml-100k own-log flow: next-event NDCG@10 0.07 with that gap,
        # 0.14 without). So the gap is only computed when the caller sends the time.
        request = {name: float(value) for name, value in (context or {}).items()}
        now = self.default_time() if at is None else at
        if now is not None:
            request[TIMESTAMP] = float(now)
        if at is not None:
            request[LAST_TIMESTAMP] = last
        return Ask(user, rows, k, excluded[excluded >= 0], request)

    def _stored_rows(self, user: int, since: Sequence[tuple]) -> tuple[History, float]:
        """The user's stored history row (cached) with the real-time ``since`` items appended, and
        the time of their latest interaction (-1 unknown)."""
        rows = self._rows.get(user, lambda: request_rows(self.pipeline.history, np.array([user], dtype=np.int64),
                                                         self.pipeline.n_items, self.pipeline.history_len))
        last = float(self.content.last_time[user]) if user >= 0 else -1.0
        if since:
            rows, last = self._with_recent(rows, last, since)
        return rows, last

    @property
    def has_search(self) -> bool:
        return self.search_engine is not None

    def search_ask(self, query: str, user_id, k: int, exclude=(), since: Sequence[tuple] = ()) -> SearchAsk:
        """One /search request resolved against the bundle; ``user_id`` (optional) orders the
        results by that user's taste, their real-time ``since`` items included."""
        user = -1 if user_id is None else int(self.content.users.index_of(user_id))
        rows = self._stored_rows(user, since)[0] if user_id is not None else None
        excluded = self.item_index(exclude)
        return SearchAsk(query, user, rows, k, excluded[excluded >= 0])

    def search_many(self, asks: Sequence[SearchAsk]) -> list[Recommendation]:
        """Answer several queries with one encoder call and one FAISS search (`SearchEngine`);
        asks with a user with history get their tower output computed in one batch too."""
        if self.search_engine is None:
            raise NoSearchIndex(self.version)
        timings: dict[str, float] = {}
        user_vectors = personal = None
        with_user = [row for row, ask in enumerate(asks) if ask.personal]
        if with_user:
            rows = stack_rows([asks[row].rows for row in with_user])
            users = np.array([asks[row].user for row in with_user], dtype=np.int64)
            vectors = self.pipeline.user_vectors(users, rows.recent)
            user_vectors = np.zeros((len(asks), vectors.shape[1]), np.float32)
            user_vectors[with_user] = vectors
            personal = np.zeros(len(asks), bool)
            personal[with_user] = True
        k = max(ask.k for ask in asks)
        answers = self.search_engine.search_many([ask.query for ask in asks], k, [ask.exclude for ask in asks],
                                          user_vectors, personal, self.pipeline.item_vectors, timings)
        return [self._result(rows[:ask.k], scores[:ask.k], None, timings)
                for ask, (rows, scores) in zip(asks, answers, strict=True)]

    def recommend_many(self, asks: Sequence[Ask]) -> list[Recommendation]:
        """Answer several requests with one pass of the pipeline (one user-tower call, one feature
        build, one ranker call; FAISS searches grouped by width, see `search_excluding`); each answer
        is the one the request would get alone (`Ask.context` values missing from a request read as
        NaN: the features' "unknown")."""
        timings: dict[str, float] = {}
        users = np.array([ask.user for ask in asks], dtype=np.int64)
        rows = stack_rows([ask.rows for ask in asks])
        exclude_rows = None
        if any(len(ask.exclude) for ask in asks):
            exclude_rows = items_csr([ask.exclude for ask in asks], self.pipeline.n_items)
        names = sorted({name for ask in asks for name in ask.context})
        context = {name: np.array([ask.context.get(name, np.nan) for ask in asks], dtype=np.float64)
                   for name in names}
        k = max(ask.k for ask in asks)
        ids, scores, fallback = self.pipeline.recommend_rows(users, rows, k, True, exclude_rows, self.n_candidates,
                                                             context, timings)
        return [self._result(ids[row, :ask.k], scores[row, :ask.k], "popular" if fallback[row] else None, timings)
                for row, ask in enumerate(asks)]

    def _with_recent(self, rows: History, last: float, since: Sequence[tuple]) -> tuple[History, float]:
        """``rows`` with the known items of ``since`` appended (each once, none already seen), and
        the latest of ``last`` and their times."""
        items = self.item_index([item for item, _ in since])
        seen = set(rows.seen.indices.tolist())
        added = []
        for item in items.tolist():
            if item >= 0 and item not in seen:
                seen.add(item)
                added.append(item)
        missing = self._recent_width - rows.recent.shape[1]
        if missing > 0:  # rows narrower than the widest reader: left-pad, keeping what they hold
            rows = History(rows.seen, np.pad(rows.recent, ((0, 0), (missing, 0)), constant_values=-1))
        return append_items(rows, [added]), max([last, *(float(stamp) for _, stamp in since)])

    def explain(self, user_id, item_ids: Sequence, n: int, since: Sequence[tuple] = ()) -> list[Explanation]:
        """For each of ``item_ids``, the ``n`` items of the user's history (stored plus the real-time
        ``since``, as `ask` reads it; the newest `MAX_EXPLAIN_HISTORY`) closest to it in the item
        space: the tower's cosine similarity, not the ranker's reasons. ``None`` is an unknown item."""
        user = -1 if user_id is None else int(self.content.users.index_of(user_id))
        history = history_newest_first(self._stored_rows(user, since)[0])
        items = np.full(len(item_ids), -1, dtype=np.int64)
        named = [row for row, item in enumerate(item_ids) if item is not None]
        items[named] = self.item_index([item_ids[row] for row in named])
        nearest = closest_in_history(self.pipeline.item_vectors, items, history, n)
        return [Explanation(item, self._result(ids, scores, None, {}))
                for item, (ids, scores) in zip(item_ids, nearest, strict=True)]

    def similar(self, item_id, k: int) -> Recommendation:
        item = int(self.item_index([item_id])[0])
        if item < 0:
            raise UnknownItemError(item_id)
        return self.similar_many([(item, k)])[0]

    def similar_many(self, asks: Sequence[tuple[int, int]]) -> list[Recommendation]:
        """Items closest to each ``(item index, k)`` in the item space, one FAISS search for all."""
        vectors = self.pipeline.item_vectors
        answers: list[Recommendation | None] = [None] * len(asks)
        # Requests with the same k share a search: a search's width must not depend on the batch
        # (see `search_excluding`).
        for k in sorted({want for _, want in asks}):
            rows = [row for row, (_, want) in enumerate(asks) if want == k]
            items = np.array([asks[row][0] for row in rows], dtype=np.int64)
            scores, ids = search(self.pipeline.index, vectors[items], min(k + 1, len(vectors)))
            ids, scores = drop_seen(ids, scores, items_csr([[item] for item in items], len(vectors)), k)
            for position, row in enumerate(rows):
                answers[row] = self._result(ids[position], scores[position], None, {})
        return answers

    def recommender(self) -> PipelineRecommender:
        """The bundle behind the evaluation contract (tower run on the given history, no cache)."""
        plain = self._open_pipeline(threads=1, precompute_users=False)
        return PipelineRecommender(plain, self.n_candidates)

    def smoke_test(self) -> None:
        """One real query for a known user and one for an unknown user; raises if either fails."""
        if len(self.content.users):
            result = self.recommend(self.content.users.ids[0], 5)
            if not result.items:
                raise RuntimeError(f"bundle {self.version} returned no items for a known user")
        fallback = self.recommend("__smoke_test_unknown_user__", 5)
        if not fallback.items or fallback.fallback != "popular":
            raise RuntimeError(f"bundle {self.version} has no working popularity fallback")
        if self.has_search:
            title = next((str(t) for t in self.titles if t), "a") if self.titles is not None else "a"
            if not self.search_many([self.search_ask(title, None, 5)])[0].items:
                raise RuntimeError(f"bundle {self.version}'s search index found nothing for {title!r}")
