"""The bundle manifest: how a bundle was made, and the sha256 and size of every file in it.

Writers put the content files into a staging directory (`recsys.bundle.publish.new_staging_dir`),
then call :func:`write_manifest`; readers call :func:`load_manifest`, which checks the format
version and, with ``verify``, every file's checksum.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import sys
import tempfile
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# 2: arrays as separate .npy files (mapped by every worker), no item-vector table beside a flat
# index. Format 1 still loads (`recsys.bundle.content`).
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
MANIFEST_NAME = "manifest.json"
_CHUNK_BYTES = 1 << 20
# Versions become directory names and symlink targets, so keep them to a safe alphabet.
_VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Module name -> distribution names to try; faiss and onnxruntime ship under several names.
_LIBRARIES: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy",),
    "pandas": ("pandas",),
    "torch": ("torch",),
    "faiss": ("faiss-cpu", "faiss-gpu", "faiss"),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "onnx": ("onnx",),
}


class BundleError(Exception):
    """Base class for every bundle problem."""


class BundleNotFound(BundleError):
    """Nothing that looks like a bundle at the given path."""


class BundleFormatError(BundleError):
    """manifest.json is missing, unreadable, or of an unsupported format version."""


class BundleChecksumError(BundleError):
    """The files on disk differ from what manifest.json records."""

    def __init__(self, bundle_dir: Path, mismatched: list[str], missing: list[str], unexpected: list[str]):
        self.bundle_dir = bundle_dir
        self.mismatched = mismatched
        self.missing = missing
        self.unexpected = unexpected
        problems = [
            f"{label}: {', '.join(names)}"
            for label, names in (
                ("changed (sha256 or size differs)", mismatched),
                ("missing", missing),
                ("unexpected extra files", unexpected),
            )
            if names
        ]
        super().__init__(
            f"bundle {bundle_dir} does not match its manifest; {'; '.join(problems)}. "
            "The bundle was modified or copied incompletely: re-copy or rebuild it."
        )


class BundleVersionExists(BundleError):
    """A version with the same name is already published."""


@dataclass
class Manifest:
    format_version: int
    bundle_version: str
    created_at: str
    kind: str
    data_fingerprint: str
    config: dict[str, Any] = field(default_factory=dict)
    library_versions: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=_jsonable) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BundleFormatError(f"manifest is not valid JSON ({exc}): rebuild the bundle") from exc
        if not isinstance(raw, dict):
            raise BundleFormatError("manifest must be a JSON object: rebuild the bundle")
        _check_format_version(raw.get("format_version"))
        missing = [f.name for f in fields(cls) if f.name not in raw]
        if missing:
            raise BundleFormatError(f"manifest lacks fields {missing}: rebuild the bundle")
        manifest = cls(**{f.name: raw[f.name] for f in fields(cls)})
        _check_field_types(manifest)
        return manifest


def _jsonable(value: Any) -> Any:
    """Let configs and metrics hold numpy scalars and paths without every caller converting them."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(
        f"{type(value).__name__} is not JSON serialisable: convert it to a str/int/float/list/dict "
        "before putting it in a manifest's config or metrics"
    )


def _check_format_version(found: Any) -> None:
    if found is None:
        raise BundleFormatError("manifest has no format_version, so it is not a bundle manifest: rebuild it")
    # bool is an int in Python; `true` in a manifest is corruption, not format 1.
    if type(found) is not int or found not in READABLE_FORMATS:
        raise BundleFormatError(
            f"bundle format {found} is not supported by this version (reads "
            f"{', '.join(map(str, READABLE_FORMATS))}): rebuild it with `make retrain`"
        )


def _check_field_types(manifest: Manifest) -> None:
    for name in ("bundle_version", "created_at", "kind", "data_fingerprint"):
        if not isinstance(getattr(manifest, name), str):
            raise BundleFormatError(f"manifest field {name!r} must be a string: rebuild the bundle")
    for name in ("config", "library_versions", "metrics", "files"):
        if not isinstance(getattr(manifest, name), dict):
            raise BundleFormatError(f"manifest field {name!r} must be an object: rebuild the bundle")
    _check_version_name(manifest.bundle_version, BundleFormatError)
    for relpath, entry in manifest.files.items():
        _check_relpath(relpath)
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and isinstance(entry.get("bytes"), int)):
            raise BundleFormatError(
                f"manifest entry for {relpath!r} needs 'sha256' (str) and 'bytes' (int): rebuild the bundle"
            )


def _check_relpath(relpath: str) -> None:
    # Verification opens these paths, so a hostile manifest must not point outside the bundle.
    parts = Path(relpath).parts
    if Path(relpath).is_absolute() or ".." in parts or not parts:
        raise BundleFormatError(
            f"manifest lists {relpath!r}, which is outside the bundle: rebuild the bundle"
        )


def _check_version_name(version: str, error: type[Exception] = ValueError) -> None:
    if not _VERSION_PATTERN.match(version):
        raise error(
            f"bundle version {version!r} is not a valid name: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )


def library_versions() -> dict[str, str]:
    """Versions of Python and the numeric/ML libraries, skipping those not installed.

    Modules already imported report their own ``__version__``; the rest are read from package
    metadata, which records the same version without paying for an import of e.g. torch.
    """
    versions = {"python": platform.python_version()}
    for module_name, dist_names in _LIBRARIES.items():
        version = _installed_version(module_name, dist_names)
        if version is not None:
            versions[module_name] = version
    return versions


def _installed_version(module_name: str, dist_names: tuple[str, ...]) -> str | None:
    module = sys.modules.get(module_name)
    if module is not None and isinstance(getattr(module, "__version__", None), str):
        return module.__version__
    for dist_name in dist_names:
        try:
            return metadata.version(dist_name)
        except metadata.PackageNotFoundError:
            continue
    return None


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks so multi-GB indexes do not have to fit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _content_files(bundle_dir: Path) -> list[str]:
    """Relative POSIX paths of every file in the bundle except the top-level manifest."""
    return sorted(
        path.relative_to(bundle_dir).as_posix()
        for path in bundle_dir.rglob("*")
        if path.is_file() and path != bundle_dir / MANIFEST_NAME
    )


def _hash_files(bundle_dir: Path) -> dict[str, dict[str, Any]]:
    return {
        relpath: {"sha256": sha256_file(bundle_dir / relpath), "bytes": (bundle_dir / relpath).stat().st_size}
        for relpath in _content_files(bundle_dir)
    }


def _default_version(now: datetime, manifest: Manifest) -> str:
    # The hash covers the contents and the microsecond timestamp, so two bundles built in the
    # same second, even from identical contents, still get different names.
    identity = json.dumps([manifest.files, manifest.kind, manifest.data_fingerprint, manifest.created_at])
    short_hash = hashlib.sha256(identity.encode()).hexdigest()[:8]
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{short_hash}"


def write_manifest(
    staging_dir: str | os.PathLike[str],
    *,
    kind: str,
    data_fingerprint: str,
    config: dict[str, Any],
    metrics: dict[str, Any],
    bundle_version: str | None = None,
) -> Manifest:
    """Hash every file under ``staging_dir`` and write ``manifest.json`` there atomically."""
    staging = Path(staging_dir)
    if not staging.is_dir():
        raise BundleNotFound(f"staging directory {staging} does not exist: create it with new_staging_dir()")
    if bundle_version is not None:
        _check_version_name(bundle_version)
    now = datetime.now(UTC)
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        bundle_version=bundle_version or "",
        created_at=now.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        kind=kind,
        data_fingerprint=data_fingerprint,
        config=dict(config),
        library_versions=library_versions(),
        metrics=dict(metrics),
        files=_hash_files(staging),
    )
    if bundle_version is None:
        manifest.bundle_version = _default_version(now, manifest)
    _write_atomically(staging / MANIFEST_NAME, manifest.to_json())
    log.info(
        "wrote manifest for bundle %s (%d files) in %s", manifest.bundle_version, len(manifest.files), staging
    )
    return manifest


def load_manifest(bundle_dir: str | os.PathLike[str], verify: bool = True) -> Manifest:
    """Read and validate ``manifest.json``; with ``verify``, also check every file against it."""
    directory = Path(bundle_dir)
    if not directory.is_dir():
        raise BundleNotFound(f"bundle directory {directory} does not exist")
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleFormatError(
            f"{directory} has no {MANIFEST_NAME}: it is not a bundle (pass the bundle directory, "
            "not a parent) or it was never finished; rebuild it"
        )
    try:
        manifest = Manifest.from_json(manifest_path.read_text(encoding="utf-8"))
    except BundleFormatError as exc:
        raise BundleFormatError(f"{manifest_path}: {exc}") from exc
    if verify:
        verify_files(directory, manifest)
    return manifest


def verify_files(bundle_dir: str | os.PathLike[str], manifest: Manifest) -> None:
    """Raise :class:`BundleChecksumError` unless the files on disk are exactly those in the manifest."""
    directory = Path(bundle_dir)
    on_disk = set(_content_files(directory))
    expected = manifest.files
    missing = sorted(set(expected) - on_disk)
    unexpected = sorted(on_disk - set(expected))
    mismatched = sorted(
        relpath for relpath in set(expected) & on_disk if not _matches(directory / relpath, expected[relpath])
    )
    if missing or unexpected or mismatched:
        raise BundleChecksumError(directory, mismatched, missing, unexpected)


def _matches(path: Path, entry: dict[str, Any]) -> bool:
    # Compare sizes first: a truncated copy is caught without hashing gigabytes.
    return path.stat().st_size == entry["bytes"] and sha256_file(path) == entry["sha256"]


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
