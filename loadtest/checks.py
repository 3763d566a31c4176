"""Body checks for the load test: each returns ``None`` for a good body or a short problem.

Problems carry no ids, so Locust's failure table groups them into a few rows.
"""

from __future__ import annotations

import itertools
import math
from typing import Any


def _items_problem(items: Any, k: int, expected: int | None) -> str | None:
    """Well-formed entries, best first: exactly ``expected`` of them, or (None) at most ``k``."""
    if not isinstance(items, list):
        return "items is not a list"
    if expected is None and len(items) > k:
        return f"asked k={k}, got {len(items)} items"
    if expected is not None and len(items) != expected:
        return f"asked k={k}, expected {expected} items, got {len(items)}"
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("item_id"), str) or not item["item_id"]:
            return "an item lacks a string item_id"
        score = item.get("score")
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            return "an item's score is not a finite number"
        if "title" not in item or not (item["title"] is None or isinstance(item["title"], str)):
            return "an item's title is missing or not a string/null"
    ids = [item["item_id"] for item in items]
    if len(set(ids)) != len(ids):
        return "duplicate items in one list"
    scores = [item["score"] for item in items]
    if any(later > earlier + 1e-6 * max(1.0, abs(earlier)) for earlier, later in itertools.pairwise(scores)):
        return "items are not ordered by score"
    return None


def _version_problem(body: dict) -> str | None:
    version = body.get("model_version")
    if not isinstance(version, str) or not version:
        return "model_version missing or empty"
    return None


def recommend_problem(body: Any, *, user: str, k: int, known: bool, n_items: int, seen: set[str] | None = None,
                      excluded: tuple[str, ...] = ()) -> str | None:
    """``seen`` (the user's stored history) turns on the content checks; None checks shape and k only."""
    if not isinstance(body, dict):
        return "body is not a JSON object"
    missing = {"user", "items", "model_version", "fallback"} - body.keys()
    if missing:
        return f"body lacks {sorted(missing)}"
    if body["user"] != user:
        return "body names another user"
    if problem := _version_problem(body):
        return problem
    if known and body["fallback"] is not None:
        return "known user with history marked fallback"
    if not known and body["fallback"] != "popular":
        return f"unknown user not marked fallback 'popular' (got {body['fallback']!r})"
    banned = set(excluded) | (seen if known and seen is not None else set())
    expected = min(k, max(0, n_items - len(banned)))
    if problem := _items_problem(body["items"], k, expected):
        return problem
    returned = {item["item_id"] for item in body["items"]}
    if seen is not None and known and returned & seen:
        return "returned items the user has already seen"
    if seen is not None and returned & set(excluded):
        return "returned an excluded item"
    return None


def similar_problem(body: Any, *, item: str, k: int, n_items: int) -> str | None:
    if not isinstance(body, dict):
        return "body is not a JSON object"
    missing = {"item", "items", "model_version"} - body.keys()
    if missing:
        return f"body lacks {sorted(missing)}"
    if body["item"] != item:
        return "body names another item"
    if problem := _version_problem(body):
        return problem
    if problem := _items_problem(body["items"], k, min(k, n_items - 1)):
        return problem
    if any(entry["item_id"] == item for entry in body["items"]):
        return "an item is listed as similar to itself"
    return None


def search_problem(body: Any, *, query: str, user: str | None, k: int, known: bool,
                   excluded: tuple[str, ...] = (), content: bool = True) -> str | None:
    """A /search answer for a query made of a catalogue title's words; ``content`` also requires a
    match (the title's own item at least) and no excluded item."""
    if not isinstance(body, dict):
        return "body is not a JSON object"
    missing = {"query", "user", "items", "model_version", "personalised"} - body.keys()
    if missing:
        return f"body lacks {sorted(missing)}"
    if body["query"] != query:
        return "body echoes another query"
    if body["user"] != user:
        return "body names another user"
    if problem := _version_problem(body):
        return problem
    if body["personalised"] is not known:  # sampled known users all have history; unknown ones none
        return f"{'known' if known else 'anonymous or unknown'} user answered personalised={body['personalised']!r}"
    if problem := _items_problem(body["items"], k, None):
        return problem
    if content and not body["items"]:
        return "no match for words of a catalogue title"
    if content and {item["item_id"] for item in body["items"]} & set(excluded):
        return "returned an excluded item"
    return None


def unknown_item_problem(status: int, body: Any) -> str | None:
    if status != 404:
        return f"unknown item answered {status}, expected 404"
    if not isinstance(body, dict) or body.get("error") != "unknown_item":
        return "404 body lacks error 'unknown_item'"
    return None


def events_problem(status: int, body: Any, sent: int) -> str | None:
    if status != 202:
        return f"POST /events answered {status}, expected 202"
    if not isinstance(body, dict) or body.get("accepted") != sent:
        return f"sent {sent} events, body does not say accepted={sent}"
    return None
