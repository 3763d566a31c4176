"""Dump every answer a bundle gives over HTTP, to compare two versions of the code byte for byte.

``python -m ops.answer_dump --bundle artifacts/ml-100k/bundles/compressed --out dump.json``

Starts ``python -m serving`` on 127.0.0.1 (the load test's harness), asks ``GET /recommend?k=20`` for every
user in the bundle's id map (plus one unknown user) and ``GET /similar?k=10`` for every item,
and writes the response bodies as canonical JSON (sorted keys) with their sha256. The answers
come over HTTP only, so a refactor that changes no behaviour leaves the file byte-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
from pathlib import Path

import httpx
from tqdm.auto import tqdm

from loadtest.harness import running_server
from recsys.bundle.load import read_id_maps

log = logging.getLogger(__name__)

UNKNOWN_USER = "__answer_dump_unknown_user__"


def id_lists(bundle: str) -> tuple[list[str], list[str]]:
    """Every user and item id the bundle knows (its id maps, read through the format's owner)."""
    users, items = read_id_maps(bundle)
    return [str(u) for u in users.ids.tolist()], [str(i) for i in items.ids.tolist()]


def dump(bundle: str, out: Path) -> str:
    command = [sys.executable, "-m", "serving", "--bundle", bundle, "--host", "127.0.0.1", "--port", "0"]
    users, items = id_lists(bundle)
    answers: dict[str, dict] = {"recommend": {}, "similar": {}}
    with tempfile.TemporaryDirectory() as scratch, \
            running_server(command, Path(scratch) / "server.log") as (_, url), \
            httpx.Client(base_url=url, timeout=30) as client:
        for user in tqdm([*users, UNKNOWN_USER], desc="recommend", unit="user"):
            answers["recommend"][user] = client.get("/recommend", params={"user": user, "k": 20}).json()
        for item in tqdm(items, desc="similar", unit="item"):
            answers["similar"][item] = client.get("/similar", params={"item": item, "k": 10}).json()
    text = json.dumps(answers, sort_keys=True, separators=(",", ":"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    digest = hashlib.sha256(text.encode()).hexdigest()
    log.info("%s: %d recommend + %d similar answers, sha256 %s", out, len(answers["recommend"]),
             len(answers["similar"]), digest)
    return digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.answer_dump", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="bundles root (serves `current`) or a bundle directory")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    dump(args.bundle, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
