"""Build one bundle directory per variant and measure it the way serving will run it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from compression.bundle_writer import BundleSpec, write_bundle
from compression.students import Student
from recsys.bundle.content import BundleFiles
from recsys.bundle.load import load_serving_model
from recsys.bundle.manifest import write_manifest
from recsys.data.datasets import Dataset
from recsys.evaluate.backtest import backtest, split_rows_as_log
from recsys.evaluate.paired import GATE_METRICS, Resampler, UserScores, event_scores
from recsys.evaluate.scoring import sample_users
from recsys.pipeline.served import ServingModel
from recsys.split import Split
from recsys.train.torch_pipeline import towers_pipeline

log = logging.getLogger(__name__)

WARMUP_REQUESTS = 20  # untimed cold requests before timing (ONNX Runtime and FAISS first-call costs)
TIMING_BLOCK = 20  # requests a variant answers in a row before the next variant's turn


@dataclass
class Variant:
    name: str
    student: Student
    spec: BundleSpec


class RecordingScorer:
    """Wraps a ranker scorer and keeps its real inputs: calibration data for int8."""

    def __init__(self, scorer, limit: int):
        self.scorer = scorer
        self.limit = limit
        self.feeds: list[dict[str, np.ndarray]] = []

    def __call__(self, user_vec, item_vec, dense):
        if len(self.feeds) < self.limit:
            self.feeds.append({"user_vec": user_vec.copy(), "item_vec": item_vec.astype(np.float32),
                               "dense": dense.astype(np.float32)})
        return self.scorer(user_vec, item_vec, dense)


def ranker_feeds(student: Student, split: Split, requests: np.ndarray, n_batches: int = 8) -> list[dict]:
    """Real ranker inputs from the student's fp32 pipeline on training-log requests."""
    if student.ranker is None:
        return []
    pipeline = towers_pipeline(student.towers, student.tables, student.ranker)
    recorder = RecordingScorer(pipeline.score_candidates, n_batches)
    pipeline.score_candidates = recorder
    pipeline.batch_size = max(1, len(requests) // n_batches)
    pipeline.recommend(requests, 10, split.user_history("valid"))
    return recorder.feeds


def build_variant(variant: Variant, directory: Path, dataset: Dataset, split: Split, requests: np.ndarray,
                  config: dict) -> dict:
    student = variant.student
    feeds = ranker_feeds(student, split, requests)
    arrays = student.tables.to_arrays() if student.tables is not None else None
    runtime = write_bundle(directory, student.towers, dataset, split, variant.spec, student.ranker, arrays,
                           requests, feeds)
    write_manifest(directory, kind=variant.spec.kind, data_fingerprint=dataset.fingerprint(),
                   config={**config, "variant": variant.name, "student": student.summary}, metrics={})
    return runtime


def time_requests(model: ServingModel, user_ids, warm=(), k: int = 10) -> np.ndarray:
    """Milliseconds of each single ``model.recommend`` for ``user_ids``, after one untimed request
    per ``warm`` user."""
    return time_interleaved({"model": model}, user_ids, warm, k)["model"]


def time_interleaved(models: dict[str, ServingModel], user_ids, warm=(), k: int = 10,
                     block: int = TIMING_BLOCK) -> dict[str, np.ndarray]:
    """`time_requests` for several models at once, in blocks of ``block`` requests taken in turn,
    so a noisy moment on this shared machine hits all of them alike. Within a block a model runs
    back to back, as a server does; the block's first request runs once untimed beforehand, so no
    model is timed straight after another one has taken over the CPU caches."""
    for model in models.values():
        for user in warm:
            model.recommend(user, k)
    timings = {name: np.empty(len(user_ids)) for name in models}
    for start in range(0, len(user_ids), block):
        for name, model in models.items():
            model.recommend(user_ids[start], k)
            for i in range(start, min(start + block, len(user_ids))):
                started = time.perf_counter_ns()
                model.recommend(user_ids[i], k)
                timings[name][i] = (time.perf_counter_ns() - started) / 1e6
    return timings


def request_latencies(models: dict[str, ServingModel], user_ids) -> dict[str, dict[str, float]]:
    """p50 / p99 of single requests through the serving path per model, two ways, the models
    taking turns (`time_interleaved`).

    ``latency_*``: as loaded (without precomputed users), the user tower and the features' user
    side run on every request. ``served_*``: as the server answers a known user it has seen
    before, with the tower outputs computed at load and the user side cached by a first request."""
    cold = time_interleaved(models, user_ids, user_ids[:WARMUP_REQUESTS])
    for model in models.values():
        model.cache_known_users()
    served = time_interleaved(models, user_ids, user_ids)
    return {name: {**_percentiles("latency", cold[name]), **_percentiles("served", served[name])} for name in models}


# Past this many items the variants are timed a few at a time: each loaded 1M-item bundle holds
# hundreds of MB (tables, histories, index), and the card measures nine of them.
ALL_AT_ONCE_MAX_ITEMS = 200_000
LATENCY_GROUP = 2


def latency_groups(names: list[str], first: tuple[str, ...], n_items: int) -> list[list[str]]:
    """Which variants are loaded and timed together: all of them for small catalogues; else
    ``first`` (the pair the card's ratios compare) together, then the rest LATENCY_GROUP at a time."""
    if n_items <= ALL_AT_ONCE_MAX_ITEMS:
        return [list(names)]
    rest = [name for name in names if name not in first]
    return [[name for name in names if name in first],
            *(rest[start:start + LATENCY_GROUP] for start in range(0, len(rest), LATENCY_GROUP))]


def grouped_latencies(dirs: dict[str, Path], groups: list[list[str]], user_ids) -> dict[str, dict[str, float]]:
    """`request_latencies` per group of bundles, each group loaded as serving loads it and
    released before the next one is loaded."""
    latencies = {}
    for group in groups:
        models = {name: load_serving_model(dirs[name], precompute_users=False) for name in group}
        latencies.update(request_latencies(models, user_ids))
        del models
    return latencies


def _percentiles(prefix: str, timings: np.ndarray) -> dict[str, float]:
    return {f"{prefix}_p{q}_ms": float(np.percentile(timings, q)) for q in (50, 99)}


def evaluation_sample(split: Split, max_users: int | None, seed: int) -> Split:
    """The test split, or a seeded sample of its users for very large data (reported as such)."""
    if max_users is None or split.n_users <= max_users:
        return split
    sampled = sample_users(split, max_users, seed)

    def kept(frame: pd.DataFrame | None) -> pd.DataFrame | None:
        return None if frame is None else frame[frame["u"].isin(sampled.valid["u"])].reset_index(drop=True)

    return replace(sampled, test=kept(split.test), later=kept(split.later))


@dataclass
class GateEvents:
    """What every variant is scored on: each user's held-out interactions (`Split.gate_events`),
    replayed one step at a time through the bundle as serving loads it (`backtest`), with one
    fixed set of bootstrap draws over their users so that every comparison is paired."""

    log: pd.DataFrame  # external ids, times and context: a later log
    users: np.ndarray  # per event, the user's index
    items: np.ndarray  # per event, the target's index
    steps: int  # held-out events per user (at most)
    resampler: Resampler

    @classmethod
    def of(cls, split: Split, seed: int = 0) -> GateEvents:
        frame = split.gate_events()
        users = frame["u"].to_numpy()
        return cls(split_rows_as_log(split, frame), users, frame["i"].to_numpy(), split.held_out_events,
                   Resampler.over(len(np.unique(users)), seed=seed))

    def describe(self) -> str:
        what = "each user's held-out interaction" if self.steps == 1 else (
            f"each user's last {self.steps} interactions (held out of training), scored one step at a time "
            "with the earlier ones as history")
        return f"{len(self.users):,} events of {len(np.unique(self.users)):,} users: {what}"


def measure_variant(name: str, directory: Path, gate: GateEvents) -> tuple[dict, dict[str, UserScores]]:
    """The variant's card row without latency (`grouped_latencies` times the variants in turns)
    and its per-user scores, from its bundle loaded as serving loads it (without precomputed users)."""
    model = load_serving_model(directory, precompute_users=False)
    result = backtest(model, gate.log, source=f"gate events of {name}")
    per_event = event_scores(result.topk, gate.items)
    scores = {metric: UserScores.of(values, gate.users) for metric, values in per_event.items()}
    row = {"name": name, "params": int(model.runtime.get("params", 0)), "bytes": BundleFiles(directory).total_bytes(),
           "users": int(len(scores["NDCG@10"].sums)), "events": int(len(gate.users)),
           "index": model.runtime.get("index", {}).get("factory"),
           "recall@100": model.runtime.get("index", {}).get("recall@100"),
           "precision": model.runtime.get("user_tower", {}).get("precision")}
    for metric in GATE_METRICS:
        row[metric] = scores[metric].mean
        row[f"{metric}_ci"] = list(gate.resampler.interval(scores[metric]))
    log.info("variant %s: NDCG@10 %.4f [%.4f, %.4f], %d bytes", name, row["NDCG@10"], *row["NDCG@10_ci"],
             row["bytes"])
    return row, scores
