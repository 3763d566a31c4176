"""Build real tiny bundles the way the compression step does (shared by the fixtures and benchmarks)."""

from __future__ import annotations

from pathlib import Path

from compression.bundle_writer import BundleSpec, publish_bundle, write_bundle
from recsys.bundle import new_staging_dir
from recsys.data.datasets import Dataset
from recsys.split import Split
from tests.recsys.test_two_tower import train_tiny


def publish_tiny_bundle(root: Path, dataset: Dataset, split: Split, *, seed: int, make_current: bool) -> str:
    """Train tiny towers with ``seed``, write and publish a bundle under ``root``; returns its version."""
    towers = train_tiny(split, dataset, seed=seed).model
    staging = new_staging_dir(root)
    write_bundle(staging, towers, dataset, split, BundleSpec(kind="teacher"))
    path = publish_bundle(staging, root, kind="teacher", dataset=dataset, config={"seed": seed},
                          metrics={"MRR@10": 1.0}, make_current=make_current)
    return path.name
