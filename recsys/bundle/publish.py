"""Publishing bundles: staging, atomic publish into ``versions/``, the ``current`` pointer, resolving a path.

A bundle is a self-contained directory the server loads (ONNX models, FAISS index, id maps, ...)
plus the manifest (`recsys.bundle.manifest`). Writers fill a directory from :func:`new_staging_dir`,
write the manifest, then call :func:`publish`.

On disk, a bundles root looks like::

    bundles_root/
      .staging/bundle-xxxx/      work in progress, invisible to readers
      versions/<bundle_version>/ immutable, complete bundles
      current -> versions/<v>    relative symlink, swapped atomically
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from pathlib import Path

from recsys.bundle.manifest import (
    MANIFEST_NAME,
    BundleError,
    BundleNotFound,
    BundleVersionExists,
    _check_version_name,
    _fsync_dir,
    load_manifest,
)

log = logging.getLogger(__name__)

CURRENT_NAME = "current"
VERSIONS_DIR = "versions"
STAGING_DIR = ".staging"


def _fsync_tree(root: Path) -> None:
    """fsync every file, then every directory, so a rename cannot expose unwritten data after a crash."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(Path(dirpath) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def new_staging_dir(bundles_root: str | os.PathLike[str]) -> Path:
    """A fresh empty directory under ``bundles_root/.staging``, on the same filesystem as versions/."""
    staging_root = Path(bundles_root) / STAGING_DIR
    staging_root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="bundle-", dir=staging_root))


def publish(
    staging_dir: str | os.PathLike[str],
    bundles_root: str | os.PathLike[str],
    *,
    make_current: bool = True,
) -> Path:
    """Move a staged bundle to ``versions/<bundle_version>`` and, by default, point ``current`` at it.

    Readers see either the old state or the complete new bundle: files are fsynced before the
    rename, and ``current`` changes only after the new version is durable. On any failure before
    the pointer swap, ``current`` is untouched and the staging directory is left for inspection.
    """
    staging = Path(staging_dir)
    root = Path(bundles_root)
    manifest = load_manifest(staging, verify=True)
    versions_dir = root / VERSIONS_DIR
    versions_dir.mkdir(parents=True, exist_ok=True)
    target = versions_dir / manifest.bundle_version
    if target.exists() or target.is_symlink():
        raise BundleVersionExists(
            f"bundle version {manifest.bundle_version} is already published at {target}: "
            "versions are immutable, so write the manifest again with a new bundle_version"
        )
    _check_same_filesystem(staging, versions_dir)
    _fsync_tree(staging)
    os.rename(staging, target)
    _fsync_dir(versions_dir)
    _fsync_dir(staging.parent)
    log.info("published bundle %s to %s", manifest.bundle_version, target)
    if make_current:
        _swap_current(root, manifest.bundle_version)
    return target


def _check_same_filesystem(staging: Path, versions_dir: Path) -> None:
    # rename() is atomic only within one filesystem; across filesystems it fails (or, with a
    # copying fallback, would expose a half-copied directory), so refuse up front.
    if staging.stat().st_dev != versions_dir.stat().st_dev:
        raise BundleError(
            f"staging directory {staging} is on a different filesystem from {versions_dir}: "
            "create it with new_staging_dir(bundles_root) so the publish can be an atomic rename"
        )


def set_current(bundles_root: str | os.PathLike[str], version: str, *, verify: bool = True) -> None:
    """Point ``current`` at an already published version, e.g. to roll back.

    With ``verify`` the target's checksums are checked first, so a rollback never switches the
    server to a damaged bundle.
    """
    root = Path(bundles_root)
    _check_version_name(version)
    target = root / VERSIONS_DIR / version
    if not target.is_dir():
        available = ", ".join(list_versions(root)) or "none"
        raise BundleNotFound(
            f"bundle version {version} is not published under {root} (available: {available})"
        )
    load_manifest(target, verify=verify)
    _swap_current(root, version)


def _swap_current(root: Path, version: str) -> None:
    """Atomically replace the ``current`` symlink: build it under a temp name, then rename over."""
    current = root / CURRENT_NAME
    if current.exists() and not current.is_symlink():
        raise BundleError(f"{current} is a real file or directory, not a symlink: move it away and retry")
    tmp_link = root / f".{CURRENT_NAME}.{uuid.uuid4().hex}.tmp"
    os.symlink(f"{VERSIONS_DIR}/{version}", tmp_link)
    try:
        os.replace(tmp_link, current)
    except BaseException:
        tmp_link.unlink(missing_ok=True)
        raise
    _fsync_dir(root)
    log.info("current bundle under %s is now %s", root, version)


def version_dir(bundles_root: str | os.PathLike[str], version: str) -> Path:
    """Where a published version lives under a bundles root."""
    _check_version_name(version)
    return Path(bundles_root) / VERSIONS_DIR / version


def list_versions(bundles_root: str | os.PathLike[str]) -> list[str]:
    versions_dir = Path(bundles_root) / VERSIONS_DIR
    if not versions_dir.is_dir():
        return []
    return sorted(entry.name for entry in versions_dir.iterdir() if entry.is_dir())


def current_version(bundles_root: str | os.PathLike[str]) -> str | None:
    current = Path(bundles_root) / CURRENT_NAME
    if not current.is_symlink():
        return None
    return Path(os.readlink(current)).name


def resolve_bundle(path: str | os.PathLike[str]) -> Path:
    """The real directory of a bundle, given the bundle itself, a bundles root, or its ``current`` link.

    The result has symlinks resolved, so a caller keeps loading the same version even if
    ``current`` is switched while it reads.
    """
    given = Path(path)
    if (given / MANIFEST_NAME).is_file():
        return given.resolve()
    current = given / CURRENT_NAME
    if current.is_symlink() or current.exists():
        if (current / MANIFEST_NAME).is_file():
            return current.resolve()
        raise BundleNotFound(
            f"{current} points at {os.readlink(current) if current.is_symlink() else current}, "
            "which is not a bundle: roll back with set_current() or publish a new bundle"
        )
    if (given / VERSIONS_DIR).is_dir():
        raise BundleNotFound(
            f"bundles root {given} has no `{CURRENT_NAME}` pointer: publish a bundle or call set_current()"
        )
    raise BundleNotFound(
        f"no bundle at {given}: expected a bundle directory containing {MANIFEST_NAME}, "
        f"a bundles root with a `{CURRENT_NAME}` link, or that link itself"
    )
