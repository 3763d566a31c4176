"""The reports GET /reports serves: compression's report card and the load test's summary, read
from disk on each request (a rebuilt report shows without a restart).

Serving writes none of these files; the names here follow their writers
(`compression.report.write_card`, `loadtest.summary.write_summary`), which serving does not import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from recsys.bundle.manifest import MANIFEST_NAME
from recsys.bundle.publish import CURRENT_NAME, VERSIONS_DIR
from recsys.strict_json import without_nan
from serving.errors import NoReport
from serving.settings import Settings

ReportName = Literal["card.json", "card.png", "search.png", "loadtest.json", "loadtest.png"]

PNG = "image/png"
JSON = "application/json"
_CARD = "`make bundles` (`python -m compression --out OUT`, which writes OUT/card.json, card.md, card.png)"
_LOADTEST = ("`make loadtest` (`python -m loadtest.compare --teacher OUT/teacher --compressed OUT/compressed "
             "--dataset NAME --out DIR`, which writes DIR/summary.json, summary.md, summary.png)")


@dataclass(frozen=True)
class Report:
    file: str  # its name in its directory
    in_card_dir: bool  # Settings.card_dir (else Settings.loadtest_dir)
    written_by: str

    @property
    def media_type(self) -> str:
        return PNG if self.file.endswith(".png") else JSON


REPORTS: dict[str, Report] = {
    "card.json": Report("card.json", True, _CARD),
    "card.png": Report("card.png", True, _CARD),
    "search.png": Report("search.png", True, f"{_CARD} for a bundle with a search index"),
    "loadtest.json": Report("summary.json", False, _LOADTEST),
    "loadtest.png": Report("summary.png", False, _LOADTEST),
}


def card_directory(settings: Settings) -> Path | None:
    """``Settings.card_dir``, or where compression put the card of the configured bundle.

    Compression writes OUT/card.* beside the bundles roots OUT/teacher and OUT/compressed, so
    the card sits in a root's parent. ``settings.bundle`` is either that root, or a bundle in it
    (``ROOT/current`` or ``ROOT/versions/V``); any other bundle directory is not in a root, so
    there is no card to guess (None). The path is taken as configured, symlinks unresolved: a
    root linked from elsewhere keeps its card where it was configured, and a bundle swapped in by
    /admin/reload from another root keeps the configured one's card (set RECSYS_CARD_DIR then).
    """
    if settings.card_dir is not None:
        return settings.card_dir
    bundle = settings.bundle.absolute()
    if not (bundle / MANIFEST_NAME).is_file():
        return bundle.parent  # a bundles root
    if bundle.name == CURRENT_NAME:
        return bundle.parent.parent
    if bundle.parent.name == VERSIONS_DIR:
        return bundle.parent.parent.parent
    return None


def report_path(name: str, settings: Settings) -> Path:
    report = REPORTS[name]
    directory = card_directory(settings) if report.in_card_dir else settings.loadtest_dir
    if directory is None:
        raise NoReport(f"{name}: the served bundle {settings.bundle} is not in a bundles root, so there is no "
                       f"default card directory: set RECSYS_CARD_DIR to the directory {report.written_by} wrote")
    return directory / report.file


def read_report(name: str, settings: Settings) -> tuple[bytes, str]:
    """The report's body and media type; JSON re-encoded strictly (NaN and infinities as null).
    Raises `NoReport` when the file is missing or unreadable, saying what writes it."""
    report = REPORTS[name]
    path = report_path(name, settings)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise NoReport(f"{name}: no {path}; {report.written_by} writes it") from None
    except OSError as exc:
        raise NoReport(f"{name}: {path} could not be read ({exc.strerror or exc}); {report.written_by} "
                       "writes it") from None
    if report.media_type == PNG:
        return raw, PNG
    return strict_json(raw, name, path, report), JSON


def strict_json(raw: bytes, name: str, path: Path, report: Report) -> bytes:
    """A JSON object file as JSON a browser parses: Python's writers emit NaN and Infinity, which
    JSON.parse refuses, so they become null."""
    try:
        value = json.loads(raw)
        if isinstance(value, dict):
            return json.dumps(without_nan(value), allow_nan=False, separators=(",", ":")).encode()
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise NoReport(f"{name}: {path} is not valid JSON ({exc}); run {report.written_by} again") from None
    raise NoReport(f"{name}: {path} holds a JSON {type(value).__name__}, not an object; run "
                   f"{report.written_by} again")
