"""The bundle's ONNX models as pipeline stages: a serving-style session, the user tower, the ranker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


def ort_session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU session the way serving runs it: ``threads`` intra-op threads, sequential, full graph opts."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxUserEncoder:
    """(users1, history1) -> user vectors through the bundle's ONNX user tower."""

    def __init__(self, path: Path, threads: int = 1):
        self.session = ort_session(path, threads)

    def __call__(self, users1: np.ndarray, history1: np.ndarray) -> np.ndarray:
        return self.session.run(["user_vec"], {"users1": users1, "history1": history1})[0]


class OnnxRankerScorer:
    """(user_vec, item_vec, dense) -> scores through the bundle's ONNX ranker."""

    def __init__(self, path: Path, threads: int = 1):
        self.session = ort_session(path, threads)

    def __call__(self, user_vec: np.ndarray, item_vec: np.ndarray, dense: np.ndarray) -> np.ndarray:
        feed = {name: np.ascontiguousarray(value, dtype=np.float32)
                for name, value in (("user_vec", user_vec), ("item_vec", item_vec), ("dense", dense))}
        return self.session.run(["score"], feed)[0]
