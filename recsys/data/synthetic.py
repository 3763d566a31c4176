"""Seeded synthetic e-commerce interaction logs at any scale, for scale benchmarks.

The data is shaped like a shop's click log so that speed and memory numbers mean something:
Zipf-like item popularity, users who prefer a few categories and, inside them, items near a
personal latent vector, sessions of views with the odd cart and purchase, and product launches:
a share of the catalogue appears during the log and is most wanted in its first weeks. The
launches are a signal the towers cannot see (an item's vector is the same at every time) and the
ranker's time features can (popularity as of the request, trend, age). It is *not* evidence
of model quality: the generating process is ours, so a model that matches it proves little.

Output (``generate``): ``items.parquet``, ``interactions.parquet`` (sorted by user, then time)
and ``meta.json``. Same config, same seed, same numpy/pyarrow -> identical tables.

    python -m recsys.data.synthetic --preset synthetic-1m --out data/synthetic-1m
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

log = logging.getLogger(__name__)

ITEMS_SCHEMA = pa.schema(
    [("item_id", pa.int64()), ("title", pa.string()), ("category", pa.string()), ("price", pa.float64())]
)
INTERACTIONS_SCHEMA = pa.schema(
    [("user_id", pa.int64()), ("item_id", pa.int64()), ("timestamp", pa.int64()), ("event", pa.string())]
)
EVENTS = ("view", "cart", "purchase")

# Category name -> nouns for titles. Configs with more categories reuse these as "Shoes 2", ...
_CATEGORY_NOUNS = {
    "Shirts": ("Shirt", "Blouse", "Polo", "Tee"),
    "Shoes": ("Sneaker", "Boot", "Loafer", "Sandal"),
    "Kitchen": ("Pan", "Kettle", "Knife", "Mug"),
    "Electronics": ("Headphones", "Charger", "Speaker", "Cable"),
    "Books": ("Novel", "Cookbook", "Atlas", "Guide"),
    "Toys": ("Puzzle", "Robot", "Doll", "Blocks"),
    "Beauty": ("Serum", "Lipstick", "Cream", "Shampoo"),
    "Sports": ("Racket", "Yoga Mat", "Dumbbell", "Ball"),
    "Garden": ("Hose", "Planter", "Shovel", "Seeds"),
    "Home": ("Lamp", "Cushion", "Rug", "Vase"),
    "Grocery": ("Coffee", "Tea", "Pasta", "Olive Oil"),
    "Pets": ("Leash", "Cat Toy", "Dog Bed", "Bowl"),
    "Office": ("Notebook", "Pen", "Stapler", "Desk Tray"),
    "Jewelry": ("Ring", "Necklace", "Bracelet", "Earrings"),
    "Bags": ("Backpack", "Tote", "Wallet", "Suitcase"),
    "Baby": ("Stroller", "Bib", "Rattle", "Onesie"),
}
_ADJECTIVES = ("Cotton", "Classic", "Premium", "Compact", "Organic", "Vintage", "Deluxe", "Eco", "Slim")
_NOUNS_PER_CATEGORY = 4
# Candidates are proposed from popularity ** this and re-weighted by the rest (see _draw_items).
_PROPOSAL_FLATTENING = 0.5

# Independent random streams, keyed so that no stream depends on how many numbers another drew
# or on the order in which chunks are processed.
_CATALOG_STREAM, _ACTIVITY_STREAM, _CHUNK_STREAM = 0, 1, 2


@dataclass(frozen=True)
class SyntheticConfig:
    n_users: int
    n_items: int
    n_interactions: int
    n_categories: int = 20
    seed: int = 0
    days: int = 180
    start_time: int = 1_700_000_000  # fixed epoch (2023-11-14) so output never depends on today's date
    popularity_exponent: float = 1.1  # Zipf exponent of item popularity within a category
    n_favourite_categories: int = 3
    taste_concentration: float = 0.5  # Dirichlet alpha over favourites; < 1 makes one or two dominate
    noise_share: float = 0.1  # interactions that ignore the user's tastes (popularity only)
    latent_dim: int = 8
    taste_strength: float = 5.0  # how sharply users pick items near their latent vector
    n_candidates: int = 16  # popularity draws per interaction, re-weighted by taste
    activity_sigma: float = 1.2  # log-normal sigma of interactions per user: the heavy tail
    mean_session_views: float = 5.0
    cart_rate: float = 0.08  # share of views followed by a cart event on the same item
    purchase_rate: float = 0.35  # share of carts followed by a purchase
    new_item_share: float = 0.3  # items launched during the log (the rest exist from its start)
    launch_boost: float = 3.0  # log-weight bonus of an item at its launch, decaying with its age
    launch_decay_days: float = 14.0
    users_per_chunk: int = 50_000  # part of the random streams: changing it changes the data

    def __post_init__(self) -> None:
        for name in ("n_users", "n_items", "n_categories", "days", "latent_dim", "n_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_interactions < 3 * self.n_users:
            raise ValueError(
                f"n_interactions={self.n_interactions} is below 3 per user ({3 * self.n_users}); "
                "raise --interactions or lower --users"
            )
        if self.n_categories > self.n_items:
            raise ValueError(f"n_categories={self.n_categories} exceeds n_items={self.n_items}")
        if not 0.0 <= self.new_item_share <= 1.0:
            raise ValueError(f"new_item_share must be in [0, 1], got {self.new_item_share}")
        if self.launch_decay_days <= 0:
            raise ValueError(f"launch_decay_days must be > 0, got {self.launch_decay_days}")
        if self.users_per_chunk < 1:
            raise ValueError(f"users_per_chunk must be >= 1, got {self.users_per_chunk}")


PRESETS: dict[str, SyntheticConfig] = {
    "synthetic": SyntheticConfig(n_users=6_000, n_items=3_000, n_interactions=200_000, n_categories=20),
    # The scale ladder (README "Scale"): ten times the items at each step.
    "synthetic-10k": SyntheticConfig(n_users=20_000, n_items=10_000, n_interactions=400_000, n_categories=50),
    "synthetic-100k": SyntheticConfig(n_users=100_000, n_items=100_000, n_interactions=2_000_000, n_categories=100),
    "synthetic-1m": SyntheticConfig(n_users=500_000, n_items=1_000_000, n_interactions=10_000_000, n_categories=200),
}


@dataclass(frozen=True)
class SyntheticPaths:
    interactions: Path
    items: Path
    meta: Path


@dataclass(frozen=True)
class Catalog:
    """Items in internal *slot* order: grouped by category, most popular first within each.

    That order makes a popularity draw inside a category one closed-form Zipf sample; public
    item ids are a random permutation of slots so ids carry no category or popularity signal.
    """

    category_start: np.ndarray  # (n_categories,) first slot of each category
    category_size: np.ndarray  # (n_categories,)
    category_cdf: np.ndarray  # (n_categories,) cumulative share of traffic
    slot_category: np.ndarray  # (n_items,)
    slot_to_id: np.ndarray  # (n_items,) public item id of each slot
    vectors: np.ndarray  # (n_items, latent_dim) float32, unit rows
    price: np.ndarray  # (n_items,)
    noun: np.ndarray  # (n_items,) index into the category's nouns
    adjective: np.ndarray  # (n_items,) index into _ADJECTIVES
    launch: np.ndarray  # (n_items,) float32 seconds after start_time the item appears; -inf = always there


@dataclass(frozen=True)
class _Tastes:
    vectors: np.ndarray  # (n_users, latent_dim) float32, unit rows
    favourites: np.ndarray  # (n_users, n_fav) category indices
    favourite_cdf: np.ndarray  # (n_users, n_fav) cumulative mixture weights


def _rng(cfg: SyntheticConfig, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=stream))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def category_names(n_categories: int) -> list[str]:
    base = list(_CATEGORY_NOUNS)
    return [base[c % len(base)] + ("" if c < len(base) else f" {c // len(base) + 1}") for c in range(n_categories)]


def build_catalog(cfg: SyntheticConfig) -> Catalog:
    rng = _rng(cfg, _CATALOG_STREAM)
    n_cat = cfg.n_categories
    # Every category gets one item; the rest are split unevenly, as real assortments are.
    sizes = 1 + rng.multinomial(cfg.n_items - n_cat, rng.dirichlet(np.full(n_cat, 2.0)))
    traffic = sizes * rng.lognormal(0.0, 0.5, n_cat)
    slot_category = np.repeat(np.arange(n_cat), sizes)
    log_price_mean = rng.normal(np.log(25.0), 0.8, n_cat)
    is_new = rng.random(cfg.n_items) < cfg.new_item_share
    launch = np.where(is_new, rng.random(cfg.n_items) * (cfg.days * 86_400), -np.inf).astype(np.float32)
    return Catalog(
        category_start=np.cumsum(sizes) - sizes,
        category_size=sizes,
        category_cdf=np.cumsum(traffic / traffic.sum()),
        slot_category=slot_category,
        slot_to_id=rng.permutation(cfg.n_items),
        vectors=_unit_rows(rng.standard_normal((cfg.n_items, cfg.latent_dim), dtype=np.float32)),
        price=np.round(np.exp(log_price_mean[slot_category] + rng.normal(0.0, 0.5, cfg.n_items)), 2),
        noun=rng.integers(0, _NOUNS_PER_CATEGORY, cfg.n_items),
        adjective=rng.integers(0, len(_ADJECTIVES), cfg.n_items),
        launch=launch,
    )


def items_table(cfg: SyntheticConfig, catalog: Catalog) -> pa.Table:
    id_to_slot = np.empty_like(catalog.slot_to_id)
    id_to_slot[catalog.slot_to_id] = np.arange(cfg.n_items)
    category = catalog.slot_category[id_to_slot]
    nouns = [noun for nouns in _CATEGORY_NOUNS.values() for noun in nouns]
    noun_index = (category % len(_CATEGORY_NOUNS)) * _NOUNS_PER_CATEGORY + catalog.noun[id_to_slot]
    item_id = pa.array(np.arange(cfg.n_items, dtype=np.int64))
    title = pc.binary_join_element_wise(
        pa.array(_ADJECTIVES).take(catalog.adjective[id_to_slot]),
        pa.array(nouns).take(noun_index),
        pc.binary_join_element_wise("#", pc.cast(item_id, pa.string()), ""),
        " ",
    )
    return pa.table(
        {
            "item_id": item_id,
            "title": title,
            "category": pa.array(category_names(cfg.n_categories)).take(category),
            "price": catalog.price[id_to_slot],
        },
        schema=ITEMS_SCHEMA,
    )


def interactions_per_user(cfg: SyntheticConfig) -> np.ndarray:
    """Heavy-tailed (log-normal) counts, at least 3 each, summing exactly to n_interactions."""
    rng = _rng(cfg, _ACTIVITY_STREAM)
    extra = cfg.n_interactions - 3 * cfg.n_users
    share = rng.lognormal(0.0, cfg.activity_sigma, cfg.n_users)
    exact = share / share.sum() * extra
    counts = np.floor(exact).astype(np.int64)
    largest_remainders = np.argsort(counts - exact, kind="stable")[: extra - counts.sum()]
    counts[largest_remainders] += 1
    return counts + 3


def _draw_tastes(cfg: SyntheticConfig, catalog: Catalog, n_users: int, rng: np.random.Generator) -> _Tastes:
    n_fav = min(cfg.n_favourite_categories, cfg.n_categories)
    # Gumbel top-k = n_fav categories without replacement, busy categories more often.
    keys = np.log(np.diff(catalog.category_cdf, prepend=0.0)) + rng.gumbel(size=(n_users, cfg.n_categories))
    favourites = np.argpartition(-keys, n_fav - 1, axis=1)[:, :n_fav]
    weights = rng.dirichlet(np.full(n_fav, cfg.taste_concentration), size=n_users)
    vectors = _unit_rows(rng.standard_normal((n_users, cfg.latent_dim), dtype=np.float32))
    return _Tastes(vectors=vectors, favourites=favourites, favourite_cdf=np.cumsum(weights, axis=1))


def _draw_categories(
    cfg: SyntheticConfig, catalog: Catalog, tastes: _Tastes, slot_user: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    n = len(slot_user)
    personal = rng.random(n) >= cfg.noise_share
    n_fav = tastes.favourites.shape[1]
    pick = (rng.random(n)[:, None] > tastes.favourite_cdf[slot_user]).sum(axis=1).clip(max=n_fav - 1)
    favourite = tastes.favourites[slot_user, pick]
    anywhere = np.searchsorted(catalog.category_cdf, rng.random(n), side="right")
    anywhere = anywhere.clip(max=cfg.n_categories - 1)
    return np.where(personal, favourite, anywhere), personal


def _zipf_rank(size: np.ndarray, exponent: float, u: np.ndarray) -> np.ndarray:
    """Inverse CDF of a continuous power law on [1, size+1): rank 0 is the most popular slot."""
    if abs(exponent - 1.0) < 1e-9:
        x = np.power(size + 1.0, u)
    else:
        a = 1.0 - exponent
        x = np.power(1.0 + u * (np.power(size + 1.0, a) - 1.0), 1.0 / a)
    return np.minimum(x.astype(np.int64) - 1, size.astype(np.int64) - 1)


def _launch_bonus(cfg: SyntheticConfig, launch: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Log-weight of an item's novelty at time t (seconds after start): -inf before its launch."""
    age_days = (t - launch) / 86_400
    with np.errstate(invalid="ignore", over="ignore"):
        bonus = cfg.launch_boost * np.exp(-age_days / cfg.launch_decay_days)
    return np.where(age_days < 0, -np.inf, np.where(np.isfinite(launch), bonus, 0.0)).astype(np.float32)


def _draw_items(
    cfg: SyntheticConfig,
    catalog: Catalog,
    categories: np.ndarray,
    personal: np.ndarray,
    user_vectors: np.ndarray,
    t: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Sample slots with p(item) ~ popularity * exp(strength * <user, item> + launch bonus at t),
    per category (t: seconds after start_time of each draw).

    An exact softmax over a 5,000-item category per interaction is too slow at 10M rows, so
    this is sampling importance resampling: draw n_candidates from a flatter power law (so
    liked items deep in the tail get proposed at all), weight each by the popularity the
    proposal left out times the taste and launch terms, keep one (an item not launched yet has
    weight 0; when no candidate is available, the category's most popular item is taken). Noise
    rows get strength 0: popularity and launches only.
    """
    n = len(categories)
    size = catalog.category_size[categories].astype(np.float64)
    start = catalog.category_start[categories]
    strength = np.where(personal, cfg.taste_strength, 0.0).astype(np.float32)
    proposal_exponent = cfg.popularity_exponent * _PROPOSAL_FLATTENING
    leftover_exponent = np.float32(cfg.popularity_exponent - proposal_exponent)
    best_slot = start.astype(np.int64)
    best_key = np.full(n, np.inf, dtype=np.float32)
    for _ in range(cfg.n_candidates):
        rank = _zipf_rank(size, proposal_exponent, rng.random(n))
        slot = start + rank
        affinity = np.einsum("ij,ij->i", catalog.vectors[slot], user_vectors)
        log_weight = (strength * affinity - leftover_exponent * np.log1p(rank, dtype=np.float32)
                      + _launch_bonus(cfg, catalog.launch[slot], t))
        # Exponential race, the log-free form of Gumbel-max: argmin E / w picks i with p ~ w.
        with np.errstate(invalid="ignore"):  # 0 * inf for an unlaunched item: set to inf below
            key = rng.standard_exponential(n, dtype=np.float32) * np.exp(-log_weight)
        key[np.isneginf(log_weight)] = np.inf
        better = key < best_key
        best_slot[better] = slot[better]
        best_key[better] = key[better]
    return best_slot


def _session_ids(cfg: SyntheticConfig, slot_user: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    first_of_user = np.r_[True, slot_user[1:] != slot_user[:-1]]
    starts = first_of_user | (rng.random(len(slot_user)) < 1.0 / cfg.mean_session_views)
    return np.cumsum(starts) - 1


def _session_start_times(
    cfg: SyntheticConfig, session_user: np.ndarray, n_users: int, rng: np.random.Generator
) -> np.ndarray:
    """Seconds after start_time, sorted within each user; each user is active in a sub-window."""
    window = np.sort(rng.random((n_users, 2)), axis=1) * (cfg.days * 86_400)
    lo = window[session_user, 0]
    t = lo + rng.random(len(session_user)) * (window[session_user, 1] - lo)
    # Sessions are numbered in user order, so the k-th sorted start belongs to session k.
    return t[np.lexsort((t, session_user))].astype(np.int64)


def _expand_funnel(
    cfg: SyntheticConfig, slot_user: np.ndarray, counts: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Each slot is a view, maybe followed by cart and purchase of the same item.

    Returns (row_slot, event) with each user truncated to exactly counts[user] rows, so the
    total matches n_interactions even though the funnel adds rows.
    """
    u = rng.random(len(slot_user))
    depth = (u < cfg.cart_rate).astype(np.int64) + (u < cfg.cart_rate * cfg.purchase_rate)
    rows_per_slot = depth + 1
    row_slot = np.repeat(np.arange(len(slot_user)), rows_per_slot)
    row = np.arange(len(row_slot))
    event = row - (np.cumsum(rows_per_slot) - rows_per_slot)[row_slot]
    rows_per_user = np.bincount(slot_user, weights=rows_per_slot, minlength=len(counts)).astype(np.int64)
    row_user = slot_user[row_slot]
    keep = row - (np.cumsum(rows_per_user) - rows_per_user)[row_user] < counts[row_user]
    return row_slot[keep], event[keep].astype(np.int8)


def _timestamps(
    cfg: SyntheticConfig,
    row_session: np.ndarray,
    row_user: np.ndarray,
    event: np.ndarray,
    session_start: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    # Browsing to the next item takes about a minute; cart/purchase clicks follow faster.
    gap_mean = np.where(event == 0, 60.0, 20.0)
    gaps = 1 + (rng.standard_exponential(len(event)) * gap_mean).astype(np.int64)
    first_in_session = np.r_[True, row_session[1:] != row_session[:-1]]
    gaps[first_in_session] = 0
    elapsed = np.cumsum(gaps)
    segment = np.cumsum(first_in_session) - 1
    offset = elapsed - elapsed[np.flatnonzero(first_in_session)][segment]
    ts = cfg.start_time + session_start[row_session] + offset
    return _strictly_increasing_per_user(ts, row_user)


def _strictly_increasing_per_user(ts: np.ndarray, row_user: np.ndarray) -> np.ndarray:
    """ts'[j] = max(ts[j], ts'[j-1] + 1) within each user, vectorised.

    Ties or overlapping sessions would make "the user's last item" ambiguous for temporal
    splits. Subtracting j turns the recurrence into a running max; adding user * spacing keeps
    users' running maxima from leaking into each other.
    """
    j = np.arange(len(ts), dtype=np.int64)
    spacing = int(ts.max() - ts.min()) + len(ts) + 1
    shifted = ts - j + row_user.astype(np.int64) * spacing
    return np.maximum.accumulate(shifted) - row_user.astype(np.int64) * spacing + j


def n_chunks(cfg: SyntheticConfig) -> int:
    return -(-cfg.n_users // cfg.users_per_chunk)


def interactions_chunk(cfg: SyntheticConfig, catalog: Catalog, counts: np.ndarray, chunk: int) -> pa.Table:
    """Interactions of users [chunk * users_per_chunk, ...), independent of every other chunk."""
    rng = _rng(cfg, _CHUNK_STREAM, chunk)
    first_user = chunk * cfg.users_per_chunk
    chunk_counts = counts[first_user : first_user + cfg.users_per_chunk]
    n_users = len(chunk_counts)
    slot_user = np.repeat(np.arange(n_users), chunk_counts)

    tastes = _draw_tastes(cfg, catalog, n_users, rng)
    categories, personal = _draw_categories(cfg, catalog, tastes, slot_user, rng)
    slot_session = _session_ids(cfg, slot_user, rng)
    session_user = slot_user[np.r_[True, slot_session[1:] != slot_session[:-1]]]
    session_start = _session_start_times(cfg, session_user, n_users, rng)
    # Items are drawn at their session's start: launches are days apart, sessions minutes long.
    slot_time = session_start[slot_session].astype(np.float32)
    item_slot = _draw_items(cfg, catalog, categories, personal, tastes.vectors[slot_user], slot_time, rng)
    row_slot, event = _expand_funnel(cfg, slot_user, chunk_counts, rng)
    row_user = slot_user[row_slot]
    timestamp = _timestamps(cfg, slot_session[row_slot], row_user, event, session_start, rng)
    return pa.table(
        {
            "user_id": (first_user + row_user).astype(np.int64),
            "item_id": catalog.slot_to_id[item_slot[row_slot]].astype(np.int64),
            "timestamp": timestamp,
            "event": pa.array(EVENTS).take(event),
        },
        schema=INTERACTIONS_SCHEMA,
    )


def _tmp_path(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _write_interactions(cfg: SyntheticConfig, catalog: Catalog, path: Path, progress: bool) -> dict[str, int]:
    counts = interactions_per_user(cfg)
    events = dict.fromkeys(EVENTS, 0)
    tmp = _tmp_path(path)
    # One row group per chunk: memory stays at one chunk however many users there are.
    with pq.ParquetWriter(tmp, INTERACTIONS_SCHEMA) as writer:
        for chunk in tqdm(range(n_chunks(cfg)), desc="interactions", unit="chunk", disable=not progress):
            table = interactions_chunk(cfg, catalog, counts, chunk)
            writer.write_table(table)
            for entry in pc.value_counts(table["event"]).to_pylist():
                events[entry["values"]] += entry["counts"]
    os.replace(tmp, path)
    return events


def generate(cfg: SyntheticConfig, out_dir: Path, progress: bool = True) -> SyntheticPaths:
    """Write items.parquet, interactions.parquet and meta.json for cfg into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = SyntheticPaths(
        interactions=out_dir / "interactions.parquet",
        items=out_dir / "items.parquet",
        meta=out_dir / "meta.json",
    )
    log.info(
        "generating %d users x %d items x %d interactions into %s",
        cfg.n_users,
        cfg.n_items,
        cfg.n_interactions,
        out_dir,
    )
    catalog = build_catalog(cfg)
    pq.write_table(items_table(cfg, catalog), _tmp_path(paths.items))
    os.replace(_tmp_path(paths.items), paths.items)
    events = _write_interactions(cfg, catalog, paths.interactions, progress)
    meta = {
        "generator": "recsys.data.synthetic",
        "config": asdict(cfg),
        "rows": {"interactions": cfg.n_interactions, "items": cfg.n_items, "users": cfg.n_users},
        "events": events,
        # numpy's samplers may change between releases; the seed alone does not pin the data.
        "versions": {"numpy": np.__version__, "pyarrow": pa.__version__},
    }
    paths.meta.write_text(json.dumps(meta, indent=2) + "\n")
    log.info("wrote %s (events %s)", out_dir, events)
    return paths


def ensure_generated(cfg: SyntheticConfig, out_dir: Path) -> SyntheticPaths:
    """``out_dir``'s log, generated unless it already holds one made with this very config (a log
    from an older config, e.g. before launches, is made again, not reused)."""
    out_dir = Path(out_dir)
    meta = out_dir / "meta.json"
    if meta.exists() and json.loads(meta.read_text()).get("config") == asdict(cfg):
        return SyntheticPaths(out_dir / "interactions.parquet", out_dir / "items.parquet", meta)
    return generate(cfg, out_dir)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recsys.data.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="synthetic")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seed", type=int, help="override the preset's seed")
    parser.add_argument("--users", type=int, help="override n_users")
    parser.add_argument("--items", type=int, help="override n_items")
    parser.add_argument("--interactions", type=int, help="override n_interactions")
    parser.add_argument("--categories", type=int, help="override n_categories")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {
        "seed": args.seed,
        "n_users": args.users,
        "n_items": args.items,
        "n_interactions": args.interactions,
        "n_categories": args.categories,
    }
    try:
        cfg = replace(PRESETS[args.preset], **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as err:
        parser.error(str(err))
    paths = generate(cfg, args.out, progress=not args.no_progress)
    log.info("interactions: %s, items: %s", paths.interactions, paths.items)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
