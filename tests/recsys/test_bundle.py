import json
import os
from pathlib import Path

import pytest

import recsys.bundle.publish as bundle_publish
from recsys.bundle.manifest import (
    FORMAT_VERSION,
    BundleChecksumError,
    BundleFormatError,
    BundleNotFound,
    BundleVersionExists,
    Manifest,
    load_manifest,
    sha256_file,
    write_manifest,
)
from recsys.bundle.publish import current_version, list_versions, new_staging_dir, publish, resolve_bundle, set_current


def _stage(root: Path, version: str | None = None, payload: bytes = b"weights") -> Path:
    staging = new_staging_dir(root)
    (staging / "model.onnx").write_bytes(payload)
    (staging / "maps").mkdir()
    (staging / "maps" / "items.json").write_text('{"a": 0}')
    write_manifest(
        staging,
        kind="teacher",
        data_fingerprint="fp-123",
        config={"dim": 32, "path": Path("x/y")},
        metrics={"ndcg@10": 0.25},
        bundle_version=version,
    )
    return staging


def _publish(root: Path, version: str, **kwargs) -> Path:
    return publish(_stage(root, version, payload=version.encode()), root, **kwargs)


def test_manifest_round_trip(tmp_path):
    staging = _stage(tmp_path, "v1")
    written = json.loads((staging / "manifest.json").read_text())
    loaded = load_manifest(staging)

    assert loaded == Manifest.from_json(loaded.to_json())
    assert written["format_version"] == FORMAT_VERSION
    assert loaded.bundle_version == "v1"
    assert loaded.kind == "teacher"
    assert loaded.config == {"dim": 32, "path": "x/y"}
    assert loaded.metrics == {"ndcg@10": 0.25}
    assert loaded.created_at.endswith("Z")
    assert set(loaded.files) == {"model.onnx", "maps/items.json"}
    assert loaded.files["model.onnx"] == {"sha256": sha256_file(staging / "model.onnx"), "bytes": 7}
    assert "python" in loaded.library_versions and "numpy" in loaded.library_versions


def test_default_versions_are_timestamped_and_distinct(tmp_path):
    first = load_manifest(_stage(tmp_path)).bundle_version
    second = load_manifest(_stage(tmp_path)).bundle_version

    assert first != second
    assert first[:16].endswith("Z") and first[8] == "T"


@pytest.mark.parametrize(
    ("damage", "field", "expected"),
    [
        (lambda d: (d / "model.onnx").write_bytes(b"weightz"), "mismatched", ["model.onnx"]),
        (lambda d: (d / "model.onnx").write_bytes(b"weights!"), "mismatched", ["model.onnx"]),
        (lambda d: (d / "maps" / "items.json").unlink(), "missing", ["maps/items.json"]),
        (lambda d: (d / "maps" / "extra.bin").write_bytes(b"x"), "unexpected", ["maps/extra.bin"]),
    ],
    ids=["modified-byte", "resized", "deleted", "extra"],
)
def test_checksum_errors_name_the_files(tmp_path, damage, field, expected):
    staging = _stage(tmp_path, "v1")
    damage(staging)

    with pytest.raises(BundleChecksumError) as info:
        load_manifest(staging)

    assert getattr(info.value, field) == expected
    assert expected[0] in str(info.value)
    load_manifest(staging, verify=False)


def test_wrong_format_version_says_how_to_fix(tmp_path):
    staging = _stage(tmp_path, "v1")
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest["format_version"] = 3
    (staging / "manifest.json").write_text(json.dumps(manifest))

    expected = r"bundle format 3 is not supported .*reads 1, 2.*make retrain"
    with pytest.raises(BundleFormatError, match=expected):
        load_manifest(staging)


@pytest.mark.parametrize("content", [None, "{not json", "[]", '{"format_version": 1}'])
def test_missing_or_invalid_manifest(tmp_path, content):
    if content is not None:
        (tmp_path / "manifest.json").write_text(content)

    with pytest.raises(BundleFormatError, match="manifest"):
        load_manifest(tmp_path)


def test_manifest_paths_cannot_escape_the_bundle(tmp_path):
    staging = _stage(tmp_path, "v1")
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest["files"]["../secret"] = {"sha256": "0", "bytes": 1}
    (staging / "manifest.json").write_text(json.dumps(manifest))

    with pytest.raises(BundleFormatError, match="outside the bundle"):
        load_manifest(staging)


def test_load_manifest_missing_dir(tmp_path):
    with pytest.raises(BundleNotFound, match="nope"):
        load_manifest(tmp_path / "nope")


def test_publish_switches_current_and_rolls_back(tmp_path):
    first = _publish(tmp_path, "v1")
    assert first == tmp_path / "versions" / "v1"
    assert current_version(tmp_path) == "v1"
    assert os.readlink(tmp_path / "current") == "versions/v1"

    _publish(tmp_path, "v2")
    assert current_version(tmp_path) == "v2"
    assert load_manifest(tmp_path / "current").bundle_version == "v2"

    _publish(tmp_path, "v3", make_current=False)
    assert current_version(tmp_path) == "v2"
    assert list_versions(tmp_path) == ["v1", "v2", "v3"]

    set_current(tmp_path, "v1")
    assert current_version(tmp_path) == "v1"
    assert (tmp_path / "current" / "model.onnx").read_bytes() == b"v1"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".current")] == []


def test_staging_is_consumed_by_publish(tmp_path):
    staging = _stage(tmp_path, "v1")
    publish(staging, tmp_path)

    assert not staging.exists()
    assert list((tmp_path / ".staging").iterdir()) == []


def test_publishing_an_existing_version_fails(tmp_path):
    _publish(tmp_path, "v1")
    staging = _stage(tmp_path, "v1", payload=b"other")

    with pytest.raises(BundleVersionExists, match="v1"):
        publish(staging, tmp_path)
    assert (tmp_path / "current" / "model.onnx").read_bytes() == b"v1"


def test_publish_refuses_an_inconsistent_staging_dir(tmp_path):
    _publish(tmp_path, "v1")
    staging = _stage(tmp_path, "v2")
    (staging / "late.bin").write_bytes(b"written after the manifest")

    with pytest.raises(BundleChecksumError):
        publish(staging, tmp_path)
    assert list_versions(tmp_path) == ["v1"]


def _fail(*_args, **_kwargs):
    raise OSError("simulated crash")


@pytest.mark.parametrize("step", ["fsync", "rename", "replace"])
def test_failed_publish_leaves_current_intact(tmp_path, monkeypatch, step):
    _publish(tmp_path, "v1")
    staging = _stage(tmp_path, "v2")
    monkeypatch.setattr(bundle_publish.os, step, _fail)

    with pytest.raises(OSError, match="simulated crash"):
        publish(staging, tmp_path)
    monkeypatch.undo()

    assert current_version(tmp_path) == "v1"
    assert load_manifest(resolve_bundle(tmp_path)).bundle_version == "v1"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".current")] == []
    if step == "replace":
        # The version itself was published whole; only the pointer swap failed.
        load_manifest(tmp_path / "versions" / "v2")
    else:
        assert list_versions(tmp_path) == ["v1"]
        load_manifest(staging)


def test_set_current_rejects_unknown_or_damaged_versions(tmp_path):
    _publish(tmp_path, "v1")
    _publish(tmp_path, "v2")
    (tmp_path / "versions" / "v1" / "model.onnx").write_bytes(b"xx")

    with pytest.raises(BundleNotFound, match="v9.*available: v1, v2"):
        set_current(tmp_path, "v9")
    with pytest.raises(BundleChecksumError):
        set_current(tmp_path, "v1")
    with pytest.raises(ValueError, match="not a valid name"):
        set_current(tmp_path, "../v1")
    assert current_version(tmp_path) == "v2"


def test_resolve_bundle_accepts_dir_root_and_current_link(tmp_path):
    version_dir = _publish(tmp_path, "v1")
    _publish(tmp_path, "v2", make_current=False)

    assert resolve_bundle(version_dir) == version_dir.resolve()
    assert resolve_bundle(tmp_path) == version_dir.resolve()
    assert resolve_bundle(tmp_path / "current") == version_dir.resolve()
    assert resolve_bundle(str(tmp_path / "versions" / "v2")).name == "v2"


def test_resolve_bundle_errors_name_the_path(tmp_path):
    with pytest.raises(BundleNotFound, match=str(tmp_path / "missing")):
        resolve_bundle(tmp_path / "missing")

    _publish(tmp_path, "v1", make_current=False)
    with pytest.raises(BundleNotFound, match="no `current` pointer"):
        resolve_bundle(tmp_path)

    (tmp_path / "current").symlink_to("versions/gone")
    with pytest.raises(BundleNotFound, match="versions/gone"):
        resolve_bundle(tmp_path)


def test_empty_root_has_no_versions(tmp_path):
    assert list_versions(tmp_path) == []
    assert current_version(tmp_path) is None
