"""What a load test asks for: settings from ``RECSYS_LOADTEST_*`` and ids sampled from a real bundle.

Known users are drawn in proportion to their history length (the bundle's seen-CSR row lengths),
so heavy users come up more often, as they do in a shop; users without history are left out
because the service rightly answers them with the popular fallback. Unknown users get fresh ids
of the bundle's id kind (a large integer for integer-id bundles, ``visitor-<hex>`` otherwise), so
they never collide with a known user or with each other. Search queries are what a shopper types:
one or two consecutive words of a catalogue title, lowercased.
"""

from __future__ import annotations

import bisect
import itertools
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys.bundle.load import has_search, read_population, read_titles
from recsys.data.idmap import IdMap
from recsys.search.text import words

ENV_PREFIX = "RECSYS_LOADTEST_"
MIXES = ("full", "reads", "recommend", "recommend+search")
CHECK_LEVELS = ("full", "shape")
POPULAR_SHARE = 0.1  # the most popular tenth of the catalogue counts as "popular" for /similar
EVENT_TYPES = ("view", "click", "add_to_cart", "purchase")
EVENT_TYPE_WEIGHTS = (60, 25, 10, 5)
RECOMMEND_KS = (5, 10, 10, 10, 20)


class LoadTestConfigError(ValueError):
    """A RECSYS_LOADTEST_* variable is missing or unusable."""


@dataclass(frozen=True)
class LoadConfig:
    """How the Locust users behave; every field has a ``RECSYS_LOADTEST_<NAME>`` variable."""

    bundle: Path
    # full: recommend + search (when the bundle has it) + similar + events; recommend: /recommend only (k=10);
    # recommend+search: /recommend and /search (k=10) in equal shares (loadtest.compare's light phase)
    mix: str = "full"
    rate: float | None = None  # requests/s per user (constant_throughput); None: closed loop, no think time
    unknown_share: float = 0.1
    checks: str = "full"  # full: bodies agree with the bundle (seen, excluded); shape: JSON shape and k only
    latencies: Path | None = None  # write exact per-name latency percentiles here when Locust quits
    max_fail_ratio: float = 0.0
    p99_slo_ms: float | None = None
    seed: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LoadConfig:
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(ENV_PREFIX + name.upper(), "").strip()
            return value or None

        bundle = get("bundle")
        if bundle is None:
            raise LoadTestConfigError(
                f"set {ENV_PREFIX}BUNDLE to the bundle (or bundles root) the server serves: "
                "users and items are sampled from its files")
        try:
            config = cls(
                bundle=Path(bundle),
                mix=get("mix") or "full",
                rate=float(get("rate")) if get("rate") else None,
                unknown_share=float(get("unknown_share") or 0.1),
                checks=get("checks") or "full",
                latencies=Path(get("latencies")) if get("latencies") else None,
                max_fail_ratio=float(get("max_fail_ratio") or 0.0),
                p99_slo_ms=float(get("p99_slo_ms")) if get("p99_slo_ms") else None,
                seed=int(get("seed") or 0),
            )
        except ValueError as exc:
            raise LoadTestConfigError(f"a {ENV_PREFIX}* number is malformed: {exc}") from None
        config.check()
        return config

    def check(self) -> None:
        if self.mix not in MIXES:
            raise LoadTestConfigError(f"{ENV_PREFIX}MIX must be one of {MIXES}, got {self.mix!r}")
        if self.checks not in CHECK_LEVELS:
            raise LoadTestConfigError(f"{ENV_PREFIX}CHECKS must be one of {CHECK_LEVELS}, got {self.checks!r}")
        if self.rate is not None and self.rate <= 0:
            raise LoadTestConfigError(f"{ENV_PREFIX}RATE is requests/s per user and must be > 0, got {self.rate}")
        if not 0 <= self.unknown_share <= 1:
            raise LoadTestConfigError(f"{ENV_PREFIX}UNKNOWN_SHARE must be in [0, 1], got {self.unknown_share}")


@dataclass(frozen=True)
class KnownUser:
    user_id: str
    row: int


class Population:
    """Users and items of one bundle, with the weights a realistic request mix draws them by."""

    def __init__(self, version: str, users: IdMap, items: IdMap, seen_indptr: np.ndarray,
                 seen_indices: np.ndarray, popularity: np.ndarray, titles: list[str] | None = None):
        self.version = version
        lengths = np.diff(seen_indptr)
        self._rows = np.flatnonzero(lengths > 0)
        if not len(self._rows):
            raise LoadTestConfigError(f"bundle {version} has no user with history to sample from")
        self._user_ids = [str(user) for user in users.to_external(self._rows)]
        self._user_cum = list(itertools.accumulate(int(n) for n in lengths[self._rows]))
        self._all_users = {str(user) for user in users.ids.tolist()}
        self._integer_users = users.is_integer
        self._next_integer = int(users.ids.max()) + 1 if users.is_integer and len(users) else 1
        self.item_ids = [str(item) for item in items.ids.tolist()]
        self._seen_indptr, self._seen_indices = seen_indptr, seen_indices
        order = np.argsort(-popularity, kind="stable")
        self._order = order
        self._popularity = popularity
        n_popular = max(1, int(len(order) * POPULAR_SHARE))
        self._popular = order[:n_popular].tolist()
        self._popular_cum = list(itertools.accumulate(float(p) + 1e-9 for p in popularity[order[:n_popular]]))
        self._long_tail = order[n_popular:].tolist() or self._popular
        self._title_words = [found for found in (words(title) for title in titles or ()) if found]

    @classmethod
    def from_bundle(cls, path: str | os.PathLike[str]) -> Population:
        """Read ids, history, popularity and, when the bundle serves /search, its titles straight from
        the bundle's files (no model is loaded)."""
        found = read_population(path)
        titles = read_titles(path) if has_search(path) else None
        return cls(found.manifest.bundle_version, found.users, found.items, found.seen_indptr, found.seen_indices,
                   found.popularity, None if titles is None else [str(title) for title in titles.tolist()])

    @property
    def has_search(self) -> bool:
        """Whether there are queries to send: the bundle has a search index and titles with words."""
        return bool(self._title_words)

    def search_query(self, rng: random.Random) -> str:
        """One or two consecutive words of a random title, lowercased ("star", "star wars")."""
        title = self._title_words[rng.randrange(len(self._title_words))]
        length = min(len(title), rng.randint(1, 2))
        start = rng.randrange(len(title) - length + 1)
        return " ".join(title[start:start + length])

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_known_users(self) -> int:
        return len(self._user_ids)

    def known_user(self, rng: random.Random) -> KnownUser:
        position = bisect.bisect_right(self._user_cum, rng.random() * self._user_cum[-1])
        position = min(position, len(self._rows) - 1)
        return KnownUser(self._user_ids[position], int(self._rows[position]))

    def unknown_user(self, rng: random.Random) -> str:
        while True:
            if self._integer_users:
                candidate = str(self._next_integer + rng.randrange(2**53))
            else:
                candidate = f"visitor-{rng.getrandbits(48):012x}"
            if candidate not in self._all_users:
                return candidate

    def is_known(self, user_id: str) -> bool:
        return user_id in self._all_users

    def seen(self, row: int) -> set[str]:
        start, stop = self._seen_indptr[row], self._seen_indptr[row + 1]
        return {self.item_ids[i] for i in self._seen_indices[start:stop]}

    def popular_item(self, rng: random.Random) -> str:
        position = bisect.bisect_right(self._popular_cum, rng.random() * self._popular_cum[-1])
        return self.item_ids[self._popular[min(position, len(self._popular) - 1)]]

    def long_tail_item(self, rng: random.Random) -> str:
        return self.item_ids[rng.choice(self._long_tail)]

    def top_items(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` most popular items with their popularity (the service's fallback order)."""
        return [(self.item_ids[i], float(self._popularity[i])) for i in self._order[:n]]

    def users_with_history(self) -> set[str]:
        return set(self._user_ids)

    def unknown_item(self, rng: random.Random) -> str:
        return f"no-such-item-{rng.getrandbits(32):08x}"

    def event_type(self, rng: random.Random) -> str:
        return rng.choices(EVENT_TYPES, EVENT_TYPE_WEIGHTS)[0]
