"""The search benchmark: queries built from the catalogue with stated rules, so anyone can rebuild it.

No human-labelled query set exists, so the labels come from the catalogue itself and the rules are
published in the file's first line:

* **known item**: a shopper looking for one title types it badly. The query is the title damaged
  the way people type (lower case, words left out, one-letter slips, words in another order, no
  punctuation), each at a stated rate from one seeded generator; the relevant items are every item
  whose title is exactly that title (ml-100k has a few duplicate titles).
* **attribute**: a shopper browsing by label ("comedy 1995", "action 1980s", "romance comedy").
  The relevant items are exactly the items carrying every stated label, so relevance is complete
  (no unjudged relevant items), which human pools never are.

The damage is generated here, independently of ``recsys.search.text``: a benchmark that reused the
engine's normaliser would reward the engine for agreeing with itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from recsys.data.datasets import DEFAULT_DATA_DIR, load_dataset

log = logging.getLogger(__name__)

QueryKind = Literal["known_item", "attribute"]
KINDS: tuple[str, ...] = ("known_item", "attribute")
MAX_RELEVANT = 300  # a label matching more than this is a category page, not a search answer
MISSING_LABELS = frozenset({"unknown"})  # ml-100k's marker for "no genre", not a genre anyone types
# Words a shopper drops without losing the title; a query must keep at least one word that is not one.
STOPWORDS = frozenset({"a", "an", "the", "of", "and", "in", "on", "to", "for", "with", "at", "by", "from", "is", "it",
                       "la", "le", "les", "el", "de", "des", "du", "der", "die", "das"})
PUNCTUATION = re.compile(r"""[,:;!?()\[\]"]""")
KEYBOARD_ROWS = (("qwertyuiop", 0.0), ("asdfghjkl", 0.25), ("zxcvbnm", 0.75))  # row, horizontal offset in keys
ALPHABET = "abcdefghijklmnopqrstuvwxyz"
TEMPLATES = ("genre", "genre+year", "genre+decade", "two genres")

KNOWN_ITEM_RELEVANCE = ("known_item: the query is one item's title damaged by the stated rates; relevant = every "
                        "item whose title is exactly that title (string equality)")
ATTRIBUTE_RELEVANCE = (f"attribute: relevant = every item carrying every key=value in `source` (genre = a label in "
                       f"the space-separated `genres`, or `category` when there is no `genres`; year = the release "
                       f"year; decade = year in [decade, decade + 9]); queries with 0 or more than {MAX_RELEVANT} "
                       f"relevant items are dropped, then the rest are sampled round-robin over the four templates "
                       f"(genre, genre+year, genre+decade, two genres) with the seed")


@dataclass(frozen=True)
class Query:
    qid: str
    kind: QueryKind
    text: str
    relevant: list[str]  # external item ids
    source: str  # the original title, or the attributes it was built from ("genre=Comedy year=1995")


@dataclass(frozen=True)
class Damage:
    """Rates of the ways a title is mistyped; per query unless it says per word."""

    lowercase: float = 0.7
    drop_word: float = 0.2  # per word
    misspell: float = 0.15  # per word of >= 4 letters: one edit
    shuffle: float = 0.2
    punctuation: float = 0.8  # strip , : ; ! ? ( ) [ ] " (nobody types "Empire Strikes Back, The")


# --- known-item queries ---------------------------------------------------------------------------


def _keyboard_neighbours() -> dict[str, str]:
    """Letters whose keys touch on a QWERTY keyboard: the likeliest wrong key for a finger slip."""
    keys = {ch: (col + offset, row) for row, (letters, offset) in enumerate(KEYBOARD_ROWS)
            for col, ch in enumerate(letters)}
    return {ch: "".join(other for other, (ox, oy) in keys.items()
                        if other != ch and ((oy == y and abs(ox - x) == 1) or (abs(oy - y) == 1 and abs(ox - x) < 1)))
            for ch, (x, y) in keys.items()}


NEIGHBOURS = _keyboard_neighbours()


def _same_case(new: str, old: str) -> str:
    return new.upper() if old.isupper() else new


def _slip(letter: str, rng: np.random.Generator) -> str:
    near = NEIGHBOURS.get(letter.lower(), "")
    return _same_case(near[rng.integers(len(near))] if near else ALPHABET[rng.integers(26)], letter)


def misspell(word: str, rng: np.random.Generator) -> str:
    """One random edit: delete, transpose adjacent, substitute (neighbouring key or any letter), insert.

    The first letter is spared: people rarely get it wrong, and a benchmark full of wrong first
    letters would measure a failure shoppers seldom make."""
    letters = [i for i, ch in enumerate(word) if ch.isalpha()][1:]
    edit = ("delete", "transpose", "substitute", "insert")[rng.integers(4)]
    pos = letters[rng.integers(len(letters))]
    if edit == "transpose":
        pairs = [i for i in letters[:-1] if word[i + 1].isalpha() and word[i + 1] != word[i]]
        if pairs:
            i = pairs[rng.integers(len(pairs))]
            return word[:i] + word[i + 1] + word[i] + word[i + 2:]
        edit = "delete"  # "aaaa" has nothing to transpose
    if edit == "delete":
        return word[:pos] + word[pos + 1:]
    if edit == "substitute":
        if rng.random() < 0.5:
            new = _slip(word[pos], rng)
        else:
            new = _same_case(rng.choice([c for c in ALPHABET if c != word[pos].lower()]), word[pos])
        return word[:pos] + new + word[pos + 1:]
    return word[:pos] + _slip(word[pos - 1], rng) + word[pos:]  # insert: the finger also hit a neighbouring key


def _is_content(word: str) -> bool:
    return any(ch.isalnum() for ch in word) and word.lower() not in STOPWORDS


def _drop_words(words: list[str], rate: float, rng: np.random.Generator) -> list[str]:
    """Each word goes with probability ``rate``; a one-word title keeps its word, and a query always
    keeps a content word (a query of "the of" names nothing, so it would measure nothing)."""
    if len(words) <= 1:
        return words
    keep = rng.random(len(words)) >= rate
    content = [i for i, w in enumerate(words) if _is_content(w)]
    needed = content or list(range(len(words)))
    if not keep[needed].any():
        keep[needed[rng.integers(len(needed))]] = True
    return [w for w, kept in zip(words, keep, strict=True) if kept]


def damage_title(title: str, damage: Damage, rng: np.random.Generator) -> str:
    """A title as a shopper might type it (rates in ``damage``); every draw comes from ``rng``."""
    text = PUNCTUATION.sub(" ", title) if rng.random() < damage.punctuation else title
    if rng.random() < damage.lowercase:
        text = text.lower()
    words = _drop_words(text.split(), damage.drop_word, rng)
    words = [misspell(w, rng) if sum(ch.isalpha() for ch in w) >= 4 and rng.random() < damage.misspell else w
             for w in words]
    if len(words) > 1 and rng.random() < damage.shuffle:
        order = rng.permutation(len(words))
        if (order == np.arange(len(words))).all():
            order[[0, 1]] = order[[1, 0]]  # a shuffle that changes nothing would understate the stated rate
        words = [words[i] for i in order]
    return " ".join(words)


def known_item_queries(items: pd.DataFrame, seed: int = 0, damage: Damage = Damage()) -> list[Query]:
    """One query per item with a non-empty title, in catalogue order."""
    rng = np.random.default_rng(seed)
    titles = items["title"].where(items["title"].notna(), "").astype(str).str.strip()
    ids = items["item_id"].astype(str)
    by_title = ids.groupby(titles.to_numpy()).agg(list).to_dict()
    queries = []
    for item_id, title in zip(ids, titles, strict=True):
        if not title:
            continue
        text = damage_title(title, damage, rng).strip()
        if text:
            queries.append(Query(f"item/{item_id}", "known_item", text, by_title[title], title))
    return queries


# --- attribute queries ----------------------------------------------------------------------------


def _labels(items: pd.DataFrame) -> pd.Series | None:
    """Each item's set of labels: ``genres`` split on spaces, else its ``category``, else None."""
    column = "genres" if "genres" in items else "category" if "category" in items else None
    if column is None:
        return None
    cells = items[column].where(items[column].notna(), "").astype(str)
    labels = cells.str.split() if column == "genres" else cells.str.strip().map(lambda c: [c] if c else [])
    return labels.map(lambda found: frozenset(found) - MISSING_LABELS)


def _template_queries(rows: list[tuple[str, str, np.ndarray]], ids: np.ndarray) -> list[Query]:
    """(text, source, mask over items) -> queries, skipping masks that match nothing."""
    return [Query(f"attr/{source.replace(' ', '/')}", "attribute", text.lower(), ids[mask].tolist(), source)
            for text, source, mask in rows if mask.any()]


def template_of(query: Query) -> str:
    """Which attribute template a query came from, read off its source ("genre=X year=Y" -> genre+year)."""
    keys = tuple(pair.split("=", 1)[0] for pair in query.source.split())
    return {("genre",): "genre", ("genre", "year"): "genre+year", ("genre", "decade"): "genre+decade",
            ("genre", "genre"): "two genres"}.get(keys, "other")


def attribute_candidates(items: pd.DataFrame, seed: int = 0) -> dict[str, list[Query]]:
    """Every attribute query with at least one relevant item, by template, before any cap or sampling."""
    labels = _labels(items)
    if labels is None:
        return {}
    rng = np.random.default_rng(seed)
    ids = items["item_id"].astype(str).to_numpy()
    vocabulary = sorted(set().union(*labels)) if len(labels) else []
    has = {label: labels.map(lambda found, label=label: label in found).to_numpy(bool) for label in vocabulary}
    out = {"genre": _template_queries([(g, f"genre={g}", has[g]) for g in vocabulary], ids)}
    if "year" in items:
        year = pd.to_numeric(items["year"], errors="coerce").to_numpy(float)
        known = np.isfinite(year)
        years = sorted({int(y) for y in year[known]})
        decades = sorted({y // 10 * 10 for y in years})
        out["genre+year"] = _template_queries([
            (f"{g} {y}", f"genre={g} year={y}", has[g] & known & (year == y)) for g in vocabulary for y in years], ids)
        out["genre+decade"] = _template_queries([
            (f"{g} {d}s", f"genre={g} decade={d}s", has[g] & known & (year >= d) & (year < d + 10))
            for g in vocabulary for d in decades], ids)
    pairs = list(combinations(vocabulary, 2))
    # Word order is drawn, not alphabetical: people say "romance comedy" as often as "comedy romance".
    flips = rng.random(len(pairs)) < 0.5
    out["two genres"] = _template_queries([
        (f"{b} {a}" if flip else f"{a} {b}", f"genre={a} genre={b}", has[a] & has[b])
        for (a, b), flip in zip(pairs, flips, strict=True)], ids)
    return out


def attribute_queries(items: pd.DataFrame, seed: int = 0, max_queries: int = 300,
                      max_relevant: int = MAX_RELEVANT) -> list[Query]:
    """Label queries with 1..max_relevant relevant items, sampled round-robin over the templates.

    Round-robin rather than uniform: genre+year pairs outnumber single genres fifty to one, and a
    uniform sample would make the benchmark almost all "<genre> <year>"."""
    candidates = attribute_candidates(items, seed)
    rng = np.random.default_rng([seed, 1])  # its own stream, so sampling does not move the word-order draws
    pools = {name: [q for q in found if len(q.relevant) <= max_relevant] for name, found in candidates.items()}
    orders = {name: list(rng.permutation(len(pool))) for name, pool in pools.items()}
    chosen: dict[str, list[int]] = {name: [] for name in pools}
    while sum(map(len, chosen.values())) < max_queries and any(orders.values()):
        for name, order in orders.items():
            if order and sum(map(len, chosen.values())) < max_queries:
                chosen[name].append(order.pop(0))
    return [pools[name][i] for name, picked in chosen.items() for i in sorted(picked)]


def too_broad(items: pd.DataFrame, max_relevant: int = MAX_RELEVANT) -> dict[str, int]:
    """Attribute queries dropped for matching more than ``max_relevant`` items: source -> count."""
    return {q.source: len(q.relevant) for found in attribute_candidates(items).values() for q in found
            if len(q.relevant) > max_relevant}


# --- the file -------------------------------------------------------------------------------------


def write_queries(path: str | Path, queries: list[Query], meta: dict) -> None:
    """JSONL: ``{"meta": ...}`` first (how the set was made), then one query per line; atomic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"meta": meta}, sort_keys=True)] + [json.dumps(asdict(q), ensure_ascii=False) for q in queries]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; the benchmark is meant to be read by everyone
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _parse_query(obj) -> Query:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    query = Query(**obj)  # a missing or unknown field raises TypeError naming it
    if not isinstance(query.text, str) or not query.text.strip():
        raise ValueError("text must be a non-empty string")
    if query.kind not in KINDS:
        raise ValueError(f"kind {query.kind!r} is not one of {KINDS}")
    if not isinstance(query.relevant, list) or not all(isinstance(r, str) for r in query.relevant):
        raise ValueError("relevant must be a list of item id strings")
    return query


def read_queries(path: str | Path) -> tuple[list[Query], dict]:
    """The queries and the meta of a file written by `write_queries`; a bad line is named."""
    path = Path(path)
    meta: dict | None = None
    queries = []
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if meta is None:
                    if not isinstance(obj, dict) or set(obj) != {"meta"} or not isinstance(obj["meta"], dict):
                        raise ValueError('the first line must be {"meta": {...}}')
                    meta = obj["meta"]
                else:
                    queries.append(_parse_query(obj))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: malformed query line ({exc}); rebuild it with "
                                 f"`python -m recsys.search.queries`") from exc
    if meta is None:
        raise ValueError(f"{path}: empty, expected a meta line then queries")
    return queries, meta


# --- CLI ------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m recsys.search.queries", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="ml-100k, instacart, synthetic[-1m] or a log path")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="dataset cache (default: data/)")
    parser.add_argument("--out", required=True, help="the JSONL file to write")
    parser.add_argument("--seed", type=int, default=0, help="drives every random choice (default 0)")
    parser.add_argument("--max-attribute-queries", type=int, default=300, help="cap on attribute queries")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    dataset = load_dataset(args.dataset, args.data_dir)
    if dataset.items is None or "title" not in dataset.items:
        raise SystemExit(f"error: {args.dataset} has no item titles; search queries need a catalogue with `title`")
    damage = Damage()
    known = known_item_queries(dataset.items, args.seed, damage)
    attribute = attribute_queries(dataset.items, args.seed, args.max_attribute_queries)
    counts = {"known_item": len(known), "attribute": len(attribute)}
    meta = {"dataset": dataset.name, "dataset_fingerprint": dataset.fingerprint(), "items": len(dataset.items),
            "seed": args.seed, "damage": asdict(damage), "max_attribute_queries": args.max_attribute_queries,
            "max_relevant": MAX_RELEVANT, "counts": counts,
            "attribute_templates": {name: [template_of(q) for q in attribute].count(name) for name in TEMPLATES},
            "attribute_too_broad": too_broad(dataset.items),
            "relevance": {"known_item": KNOWN_ITEM_RELEVANCE, "attribute": ATTRIBUTE_RELEVANCE},
            "command": f"python -m recsys.search.queries --dataset {args.dataset} --seed {args.seed}"}
    write_queries(args.out, known + attribute, meta)
    log.info("wrote %s: %d known_item, %d attribute queries (%s, seed %d)",
             args.out, counts["known_item"], counts["attribute"], dataset.name, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
