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


# Ops that quantise activations with a scale measured over the whole input tensor at run time:
# a row's output then depends on the rows run with it.
BATCH_DEPENDENT_OPS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"})


def is_batch_dependent(path: Path) -> bool:
    """Whether the model quantises activations per call (``quantize_dynamic``)."""
    import onnx  # only read at load time

    model = onnx.load(str(path), load_external_data=False)
    return any(node.op_type in BATCH_DEPENDENT_OPS for node in model.graph.node)


class OnnxModel:
    """A session run on whole batches, or row by row when the model is batch-dependent (dynamic
    int8): a request's answer must not depend on the requests batched with it, in the server's
    batcher or in an evaluation batch."""

    output = ""

    def __init__(self, path: Path, threads: int = 1):
        self.session = ort_session(path, threads)
        self.per_row = is_batch_dependent(path)

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        rows = len(next(iter(feed.values())))
        if not self.per_row or rows <= 1:
            return self.session.run([self.output], feed)[0]
        return np.concatenate([self.session.run([self.output], {name: value[row:row + 1]
                                                                for name, value in feed.items()})[0]
                               for row in range(rows)])


class OnnxUserEncoder(OnnxModel):
    """(users1, history1) -> user vectors through the bundle's ONNX user tower."""

    output = "user_vec"

    def __call__(self, users1: np.ndarray, history1: np.ndarray) -> np.ndarray:
        return self.run({"users1": users1, "history1": history1})


class OnnxRankerScorer(OnnxModel):
    """(user_vec, item_vec, dense) -> scores through the bundle's ONNX ranker."""

    output = "score"

    def __call__(self, user_vec: np.ndarray, item_vec: np.ndarray, dense: np.ndarray) -> np.ndarray:
        return self.run({name: np.ascontiguousarray(value, dtype=np.float32)
                         for name, value in (("user_vec", user_vec), ("item_vec", item_vec), ("dense", dense))})
