"""Int8 quantisation of exported ONNX models with ONNX Runtime, and the checks that it happened.

Two modes, both writing ``<out>.json`` beside the model (habit 4):

* :func:`quantize_dynamic_int8`: int8 weights, activations quantised per batch at run time
  (``DynamicQuantizeLinear`` + ``MatMulInteger``). No calibration data needed.
* :func:`quantize_static_int8`: QDQ format, uint8 activations with ranges calibrated on real
  requests, int8 per-channel weights; ORT fuses it into ``QGemm``/``QLinear*`` kernels.

Why ``reduce_range=True`` by default: on x86 CPUs without VNNI (AVX2 only, like ours) ORT's
u8 x s8 kernels use ``VPMADDUBSW``, whose int16 pair sums saturate with full 8-bit weights
(255 * 127 * 2 > 32767). 7-bit weights cannot saturate; on a ~240k-param DCN ranker this cut
the max score error 6x (dynamic 0.070 -> 0.011, static 0.066 -> 0.019) for no latency cost.

Why Gemm is rewritten to MatMul + Add before dynamic quantisation: ORT's dynamic (IntegerOps)
registry has no Gemm entry; recent ORT versions decompose Gemm themselves, older ones (the
project allows >= 1.18) silently leave every ``nn.Linear`` in fp32. Our rewrite keeps each
node's name, so ``exclude_nodes`` uses the same fp32 names in both modes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

from compression.export import make_session, read_sidecar, write_sidecar
from recsys.bundle.manifest import sha256_file

log = logging.getLogger(__name__)

QUANT_OP_TYPES = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
    "QLinearMatMul", "QLinearConv", "QGemm", "QLinearAdd", "QLinearMul", "QLinearConcat",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention",
})
WEIGHT_OPS = frozenset({"MatMul", "Gemm", "Conv", "MatMulInteger", "ConvInteger", "Gather"})
# Ops that only move values around: the layer that really produces a graph output sits behind them.
_PASSTHROUGH_OPS = frozenset({"Squeeze", "Unsqueeze", "Reshape", "Flatten", "Identity", "Transpose"})
_EPILOGUE_OPS = frozenset({"Add", "Sub", "Mul", "Div"})

QuantizeFn = Callable[..., Path]


def quantize_dynamic_int8(
    fp32_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    per_channel: bool = True,
    reduce_range: bool = True,
    exclude_nodes: Sequence[str] = (),
    op_types: Sequence[str] | None = None,
) -> Path:
    """Dynamic int8 (weights QInt8, activations quantised at run time); returns ``out_path``.

    ``exclude_nodes`` are node names of the fp32 graph kept in fp32. ``op_types=None`` lets ORT
    quantise every op type it supports (MatMul, Gather embedding tables, ...).
    """
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    model = onnx.load(str(fp32_path))
    _check_node_names(model, exclude_nodes, fp32_path)
    rewritten = gemms_as_matmul(model)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".quantize-") as tmp:
        rewritten_path = Path(tmp) / "rewritten.onnx"
        onnx.save(model, str(rewritten_path))
        prepared, preprocessed = _preprocess(rewritten_path, Path(tmp) / "prepared.onnx")
        quantized = Path(tmp) / "quantized.onnx"
        quantize_dynamic(
            str(prepared), str(quantized),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            reduce_range=reduce_range,
            nodes_to_exclude=list(exclude_nodes),
            # Gemms are MatMuls by now, so a caller's "Gemm" means MatMul here
            op_types_to_quantize=sorted({"MatMul" if t == "Gemm" else t for t in op_types}) if op_types else None,
        )
        _finish(quantized, out_path)
    settings = {"mode": "dynamic", "weight_type": "QInt8", "activation_type": "QUInt8 (dynamic)",
                "gemms_rewritten_as_matmul": rewritten, "preprocessed": preprocessed}
    _write_quant_sidecar(out_path, fp32_path, settings, per_channel, reduce_range, exclude_nodes, op_types)
    return out_path


def quantize_static_int8(
    fp32_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    calibration: Iterable[Mapping[str, np.ndarray]],
    *,
    per_channel: bool = True,
    reduce_range: bool = True,
    exclude_nodes: Sequence[str] = (),
    keep_outputs_fp32: bool = True,
    op_types: Sequence[str] | None = None,
) -> Path:
    """Static QDQ int8 calibrated (MinMax) on ``calibration`` feed dicts of real requests.

    ``keep_outputs_fp32`` also excludes the layers producing the graph outputs: QDQ would
    otherwise round the final scores/embeddings to 256 levels, and ties break top-K rankings
    (measured: 200 candidate scores collapsed to ~110 distinct values). Pass ``calibration`` as
    a list when quantising more than once (e.g. in :func:`node_sensitivity`).
    """
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    feeds = [dict(feed) for feed in calibration]
    model = onnx.load(str(fp32_path))
    _check_calibration(model, feeds, fp32_path)
    _check_node_names(model, exclude_nodes, fp32_path)
    excluded = list(dict.fromkeys([*exclude_nodes, *(output_layers(model) if keep_outputs_fp32 else [])]))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".quantize-") as tmp:
        prepared, preprocessed = _preprocess(fp32_path, Path(tmp) / "prepared.onnx")
        quantized = Path(tmp) / "quantized.onnx"
        quantize_static(
            str(prepared), str(quantized), _FeedReader(feeds),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            reduce_range=reduce_range,
            nodes_to_exclude=excluded,
            op_types_to_quantize=list(op_types) if op_types else None,
            calibrate_method=CalibrationMethod.MinMax,
        )
        _finish(quantized, out_path)
    settings = {"mode": "static", "format": "QDQ", "weight_type": "QInt8", "activation_type": "QUInt8",
                "calibrate_method": "MinMax", "calibration_batches": len(feeds),
                "calibration_rows": int(sum(len(next(iter(f.values()))) for f in feeds)),
                "preprocessed": preprocessed, "keep_outputs_fp32": keep_outputs_fp32}
    _write_quant_sidecar(out_path, fp32_path, settings, per_channel, reduce_range, excluded, op_types)
    return out_path


def gemms_as_matmul(model: onnx.ModelProto) -> int:
    """Rewrite plain ``Gemm`` (constant B, alpha=beta=1, no transA) as ``MatMul`` + ``Add`` in place.

    The MatMul keeps the Gemm's name and the Add is ``<name>_bias``. Returns how many were rewritten.
    """
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    transposed: dict[str, str] = {}
    nodes, rewritten = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or not plain or node.input[1] not in initializers:
            nodes.append(node)
            continue
        weight = node.input[1]
        if attrs.get("transB", 0):
            if weight not in transposed:
                transposed[weight] = f"{weight}_transposed"
                array = numpy_helper.to_array(initializers[weight]).T.copy()
                graph.initializer.append(numpy_helper.from_array(array, transposed[weight]))
            weight = transposed[weight]
        has_bias = len(node.input) > 2 and node.input[2]
        matmul_out = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight], [matmul_out], name=node.name))
        if has_bias:
            bias_add = helper.make_node("Add", [matmul_out, node.input[2]], [node.output[0]], name=f"{node.name}_bias")
            nodes.append(bias_add)
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unused_initializers(graph)
    return rewritten


def output_layers(model: onnx.ModelProto) -> list[str]:
    """Nodes producing each graph output, walking back through reshapes and constant epilogues.

    ``Squeeze``/``Reshape``/... and a bias ``Add`` (or scale ``Mul``, ...) with a constant operand
    belong to the layer behind them, so the walk continues to the MatMul/Gemm that computes it.
    """
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    constants |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    producers = {out: node for node in graph.node for out in node.output}
    names = []
    for output in graph.output:
        node = producers.get(output.name)
        while node is not None:
            names.append(node.name)
            node = producers.get(_layer_input(node, constants) or "")
    return list(dict.fromkeys(names))


def _layer_input(node: onnx.NodeProto, constants: set[str]) -> str | None:
    """The one non-constant input to keep walking through, or None when ``node`` does real work."""
    if node.op_type in _PASSTHROUGH_OPS:
        return node.input[0]
    if node.op_type in _EPILOGUE_OPS:
        variable = [name for name in node.input if name not in constants]
        if len(variable) == 1:
            return variable[0]
    return None


def quantizable_nodes(path: str | os.PathLike[str], op_types: Iterable[str] = ("MatMul", "Gemm", "Gather"),
                      ) -> list[str]:
    """Names of the weight-carrying nodes of an fp32 graph: candidates for :func:`node_sensitivity`."""
    wanted = set(op_types)
    return [node.name for node in onnx.load(str(path)).graph.node if node.op_type in wanted]


def quantized_ops(path: str | os.PathLike[str]) -> dict[str, int]:
    """Counts of quantisation-related op types in a model; empty if nothing was quantised."""
    counts = Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    return {op: n for op, n in sorted(counts.items()) if op in QUANT_OP_TYPES}


def weight_dtypes(path: str | os.PathLike[str]) -> dict[str, str]:
    """Storage dtype of each weight-carrying node's constant weight, keyed by node name.

    Looks through ``DequantizeLinear`` (QDQ), so a quantised Gemm reports ``int8``; dynamic
    mode's ``<name>_quant`` MatMulInteger is reported under the original ``<name>``.
    """
    graph = onnx.load(str(path)).graph
    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    result = {}
    for node in graph.node:
        if node.op_type not in WEIGHT_OPS:
            continue
        weight = node.input[0] if node.op_type == "Gather" else node.input[1]
        source = producers.get(weight)
        if source is not None and source.op_type == "DequantizeLinear":
            weight = source.input[0]
        if weight not in initializers:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(initializers[weight].data_type)
        name = node.name.removesuffix("_quant") if node.op_type.endswith("Integer") else node.name
        result[name] = np.dtype(dtype).name
    return result


def node_sensitivity(
    fp32_path: str | os.PathLike[str],
    module_inputs: Mapping[str, np.ndarray],
    quantize_fn: QuantizeFn,
    candidates: Sequence[str],
) -> dict[str, float]:
    """How much output error each candidate node causes when quantised, measured leave-one-out.

    Quantises everything once (baseline error), then once per candidate with only that node kept
    in fp32; a node's sensitivity is ``baseline_error - error_with_node_fp32`` (mean abs
    difference from the fp32 outputs on ``module_inputs``). ``quantize_fn(fp32, out,
    exclude_nodes=[...])`` is e.g. :func:`quantize_dynamic_int8` or a ``functools.partial`` of
    :func:`quantize_static_int8` with its calibration list.
    """
    fp32_path = Path(fp32_path)
    reference = _run(fp32_path, module_inputs)
    with tempfile.TemporaryDirectory(prefix=".sensitivity-", dir=fp32_path.parent) as tmp:
        all_quantized = quantize_fn(fp32_path, Path(tmp) / "all.onnx", exclude_nodes=())
        baseline = _mean_abs_error(reference, _run(all_quantized, module_inputs))
        sensitivity = {}
        for i, node in enumerate(candidates):
            quantized = quantize_fn(fp32_path, Path(tmp) / f"keep-{i}.onnx", exclude_nodes=[node])
            sensitivity[node] = baseline - _mean_abs_error(reference, _run(quantized, module_inputs))
    log.info("node sensitivity of %s (baseline mean abs error %.3g): %s", fp32_path.name, baseline, sensitivity)
    return sensitivity


def choose_fp32_nodes(sensitivity: Mapping[str, float], budget: int, *, min_gain: float = 0.0) -> list[str]:
    """The at most ``budget`` most sensitive nodes whose error reduction exceeds ``min_gain``."""
    ranked = sorted(sensitivity.items(), key=lambda item: item[1], reverse=True)
    return [name for name, gain in ranked if gain > min_gain][:max(budget, 0)]


def compare_outputs(
    path_a: str | os.PathLike[str],
    path_b: str | os.PathLike[str],
    inputs: Mapping[str, np.ndarray],
    *,
    topk: int | None = None,
    score_output: str | None = None,
) -> dict[str, Any]:
    """Max/mean abs difference between two models' outputs, and optionally top-K agreement.

    With ``topk``, the score output (``score_output``, default the first output) of shape
    ``[B, N]`` is ranked per row (a 1-D ``[N]`` output is one ranking), and ``topk_overlap`` is
    the mean fraction of model A's top-K found in model B's top-K.
    """
    outputs_a, outputs_b = _run(path_a, inputs), _run(path_b, inputs)
    if list(outputs_a) != list(outputs_b):
        raise ValueError(f"{path_a} outputs {list(outputs_a)} != {path_b} outputs {list(outputs_b)}: "
                         "compare exports of the same model")
    per_output = {name: _diff_stats(outputs_a[name], outputs_b[name]) for name in outputs_a}
    result: dict[str, Any] = {
        "max_abs_diff": max(s["max_abs_diff"] for s in per_output.values()),
        "mean_abs_diff": _mean_abs_error(outputs_a, outputs_b),
        "per_output": per_output,
    }
    if topk is not None:
        name = score_output or next(iter(outputs_a))
        result["topk"] = topk
        result["topk_overlap"] = topk_overlap(outputs_a[name], outputs_b[name], topk)
    return result


def topk_overlap(scores_a: np.ndarray, scores_b: np.ndarray, k: int) -> float:
    """Mean over rows of ``|top-k(a) & top-k(b)| / k``; 1-D scores are a single row."""
    a, b = np.atleast_2d(scores_a), np.atleast_2d(scores_b)
    if a.ndim != 2 or a.shape != b.shape or not 0 < k <= a.shape[1]:
        raise ValueError(f"top-{k} overlap needs two [B, N] score arrays with N >= k, got {a.shape} and {b.shape}")
    top_a = np.argsort(-a, axis=1, kind="stable")[:, :k]
    top_b = np.argsort(-b, axis=1, kind="stable")[:, :k]
    return float(np.mean([len(np.intersect1d(ra, rb)) / k for ra, rb in zip(top_a, top_b, strict=True)]))


def int8_embedding_table(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int8: ``q[i] = round(w[i] / s[i])`` with ``s[i] = max|w[i]| / 127``.

    Each element reconstructs within ``s[i] / 2``; all-zero rows get scale 1 (and stay zero).
    """
    weights = np.asarray(weights, dtype=np.float32)
    if weights.ndim != 2:
        raise ValueError(f"embedding table must be 2-D [rows, dim], got shape {weights.shape}")
    scales = np.abs(weights).max(axis=1) / 127.0
    scales = np.where(scales > 0, scales, 1.0).astype(np.float32)
    quantized = np.clip(np.rint(weights / scales[:, None]), -127, 127).astype(np.int8)
    return quantized, scales


def dequantize_rows(quantized: np.ndarray, scales: np.ndarray, rows: np.ndarray | Sequence[int]) -> np.ndarray:
    rows = np.asarray(rows)
    return quantized[rows].astype(np.float32) * scales[rows, None]


def max_reconstruction_error(weights: np.ndarray, quantized: np.ndarray, scales: np.ndarray) -> float:
    restored = dequantize_rows(quantized, scales, np.arange(len(weights)))
    return float(np.abs(restored - np.asarray(weights, dtype=np.float32)).max(initial=0.0))


def pick_best(
    variants: Mapping[str, Mapping[str, float]],
    *,
    min_topk_overlap: float = 0.9,
    max_abs_diff: float | None = None,
    latency_margin: float = 0.1,
) -> str:
    """Pick a variant name: fidelity first, then latency, then fidelity again to break near-ties.

    1. A variant passes when its ``topk_overlap`` (if reported) is ``>= min_topk_overlap`` and its
       ``max_abs_diff`` (if reported and ``max_abs_diff`` is given) is ``<= max_abs_diff``.
    2. Among passing variants, those whose ``p50_ms`` is within ``latency_margin`` (10%) of the
       fastest are "as fast": single-request timings on a shared 2-core box jitter by that much,
       and a coin flip should not decide the bundle.
    3. Among those, the highest ``topk_overlap`` wins, then the lowest ``max_abs_diff``, then the
       lowest ``p50_ms``.

    Include an ``"fp32"`` entry (overlap 1.0) to get it back as the fallback when no int8 variant
    is faithful enough; with no passing variant this raises ``ValueError``.
    """
    def passes(metrics: Mapping[str, float]) -> bool:
        if "topk_overlap" in metrics and metrics["topk_overlap"] < min_topk_overlap:
            return False
        return max_abs_diff is None or metrics.get("max_abs_diff", 0.0) <= max_abs_diff

    def fidelity_then_speed(name: str) -> tuple[float, float, float]:
        m = variants[name]
        return -m.get("topk_overlap", 0.0), m.get("max_abs_diff", float("inf")), m.get("p50_ms", float("inf"))

    passing = [name for name, metrics in variants.items() if passes(metrics)]
    if not passing:
        raise ValueError(
            f"no variant meets top-K overlap >= {min_topk_overlap} / max abs diff <= {max_abs_diff}: "
            f"{ {name: dict(m) for name, m in variants.items()} }; include 'fp32' as a fallback, or keep the most "
            "sensitive layers in fp32 (node_sensitivity + choose_fp32_nodes -> exclude_nodes)"
        )
    fastest = min(variants[name].get("p50_ms", float("inf")) for name in passing)
    as_fast = [name for name in passing if variants[name].get("p50_ms", float("inf")) <= fastest * (1 + latency_margin)]
    best = min(as_fast, key=fidelity_then_speed)
    log.info("picked %s among %s (passing: %s, as fast: %s)", best, sorted(variants), passing, as_fast)
    return best


def measure_latency(session: ort.InferenceSession, feed: Mapping[str, np.ndarray], n: int = 200,
                    warmup: int = 20) -> dict[str, float]:
    """Single-request latency over ``n`` timed runs after ``warmup`` untimed ones (milliseconds)."""
    feed = dict(feed)
    for _ in range(warmup):
        session.run(None, feed)
    timings = np.empty(n, dtype=np.float64)
    for i in range(n):
        start = time.perf_counter_ns()
        session.run(None, feed)
        timings[i] = time.perf_counter_ns() - start
    timings /= 1e6
    return {"p50_ms": float(np.percentile(timings, 50)), "p99_ms": float(np.percentile(timings, 99)),
            "mean_ms": float(timings.mean()), "n": n}


class _FeedReader(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = feeds
        self._position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._position >= len(self._feeds):
            return None
        self._position += 1
        return {name: np.ascontiguousarray(v) for name, v in self._feeds[self._position - 1].items()}

    def rewind(self) -> None:
        self._position = 0


def _check_calibration(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], path: Path) -> None:
    if not feeds:
        raise ValueError(f"calibration for {path} is empty: pass a list of feed dicts from real requests "
                         "(a generator is used up after one quantisation)")
    expected = {i.name for i in model.graph.input}
    for feed in feeds:
        if set(feed) != expected:
            raise ValueError(f"calibration feed has inputs {sorted(feed)} but {path} takes {sorted(expected)}; "
                             "build feeds with the model's input names")


def _check_node_names(model: onnx.ModelProto, names: Iterable[str], path: Path) -> None:
    known = {node.name for node in model.graph.node}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"exclude_nodes {unknown} are not nodes of {path}; pick names from "
                         f"quantizable_nodes(path), e.g. {sorted(known)[:5]}")


def _preprocess(fp32_path: Path, out: Path) -> tuple[Path, bool]:
    """ORT's recommended shape-inference pass; optimisation skipped so node names stay stable."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        # It writes scratch files (a uuid-named .data copy of the weights, sym_shape_infer_temp.onnx)
        # into the working directory and leaves them: run it inside the caller's temp directory.
        with contextlib.chdir(out.parent):
            quant_pre_process(str(fp32_path.resolve()), str(out.resolve()), skip_optimization=True)
    except Exception as error:  # optional step: quantisation works without it
        log.warning("quant_pre_process failed on %s (%s); quantising the model as exported", fp32_path, error)
        return fp32_path, False
    return out, True


def _finish(quantized: Path, out_path: Path) -> None:
    onnx.checker.check_model(str(quantized))
    os.replace(quantized, out_path)


def _write_quant_sidecar(out_path: Path, fp32_path: Path, settings: dict[str, Any], per_channel: bool,
                         reduce_range: bool, exclude_nodes: Sequence[str], op_types: Sequence[str] | None) -> None:
    source = read_sidecar(fp32_path) or {}
    ops = quantized_ops(out_path)
    payload = settings | {
        "path": str(out_path), "bytes": out_path.stat().st_size, "sha256": sha256_file(out_path),
        "source": {"path": str(fp32_path), "sha256": sha256_file(fp32_path), "module": source.get("module")},
        "per_channel": per_channel, "reduce_range": reduce_range, "exclude_nodes": list(exclude_nodes),
        "op_types": list(op_types) if op_types else "all supported", "quantized_ops": ops,
        "onnxruntime_version": ort.__version__, "onnx_version": onnx.__version__,
    }
    write_sidecar(out_path, payload)
    if not ops:
        log.warning("%s contains no quantised ops: nothing in it was quantisable or everything was excluded", out_path)
    log.info("%s int8 %s: %d bytes, ops %s", settings["mode"], out_path, payload["bytes"], ops)


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _run(path: str | os.PathLike[str], inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = make_session(path)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(inputs)), strict=True))


def _diff_stats(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return {"max_abs_diff": float(diff.max(initial=0.0)), "mean_abs_diff": float(diff.mean()) if diff.size else 0.0}


def _mean_abs_error(reference: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray]) -> float:
    diffs = [np.abs(reference[n].astype(np.float64) - other[n].astype(np.float64)).ravel() for n in reference]
    return float(np.concatenate(diffs).mean())
