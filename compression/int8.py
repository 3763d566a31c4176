"""Int8 versions of the served models: row-wise int8 tables inside the user tower, ORT
int8 (dynamic or static QDQ, whichever is more faithful per model) for the dense layers, or fp32
dense layers where int8 is not faster on a single request."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compression.quantize import (
    compare_outputs,
    int8_embedding_table,
    measure_latency,
    pick_best,
    quantize_static_int8,
    quantized_ops,
)
from recsys.models.two_tower import TwoTower, UserTower
from recsys.pipeline.onnx import ort_session

log = logging.getLogger(__name__)

DENSE_OPS = ("MatMul", "Gemm")
MIN_TOPK_OVERLAP = 0.9
LATENCY_MARGIN = 0.1  # single-request timings here jitter by about this much


class RowwiseInt8Embedding(nn.Module):
    """An embedding table stored as int8 rows with one float scale per row (4x smaller)."""

    def __init__(self, weights: torch.Tensor):
        super().__init__()
        quantized, scales = int8_embedding_table(weights.detach().numpy())
        self.register_buffer("quantized", torch.from_numpy(quantized))
        self.register_buffer("scales", torch.from_numpy(scales))

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        index = index.long()  # token ids may come from a narrowed table
        return self.quantized[index].to(torch.float32) * self.scales[index].unsqueeze(-1)


def narrowest_int(values: torch.Tensor) -> torch.dtype:
    """The smallest of int16 / int32 / int64 that holds every value (ids fit int16 in most catalogs)."""
    peak = int(values.abs().max()) if values.numel() else 0
    return next(dtype for dtype in (torch.int16, torch.int32, torch.int64) if peak <= torch.iinfo(dtype).max)


def int8_user_tower(towers: TwoTower) -> UserTower:
    """The user tower's export view with every table it reads stored as row-wise int8 (the item
    table, the user id and user feature embeddings) and the user token table in the narrowest
    integer type; the dense layers stay fp32 here (ONNX Runtime quantises them afterwards)."""
    clone = copy.deepcopy(towers).eval()
    for name in ("user_id", "user_feature"):
        setattr(clone, name, RowwiseInt8Embedding(getattr(clone, name).weight))
    clone.user_tokens = clone.user_tokens.to(narrowest_int(clone.user_tokens))
    return UserTower(clone, table=RowwiseInt8Embedding).eval()


def choose_int8(fp32_path: Path, out_path: Path, calibration: list[dict[str, np.ndarray]],
                check_inputs: dict[str, np.ndarray], topk: int | None) -> dict:
    """Quantise the dense layers statically (QDQ, calibrated scales), keep them if faithful and not
    clearly slower than fp32, record why.

    Dynamic quantisation is not a candidate: it scales activations by each batch's range, so a
    user's answer would depend on who else is in the batch (evaluation, precompute and the server
    batch differently). fp32 dense layers are kept instead when the int8 version is not faithful
    enough, or when fp32 is clearly faster: on layers a few dozen wide, quantising the activations
    on every call costs more than the int8 product saves, and the layers are a few kB either way."""
    candidates = {
        "static": quantize_static_int8(fp32_path, out_path.with_suffix(".static.onnx"), calibration,
                                       op_types=DENSE_OPS),
    }
    # Fidelity over the whole check batch; speed on one request, the way serving calls the model.
    one_request = {name: value[:1] for name, value in check_inputs.items()}
    stats = {"fp32": {"topk_overlap": 1.0, "max_abs_diff": 0.0,
                      **measure_latency(ort_session(fp32_path), one_request, n=200, warmup=20)}}
    for mode, path in candidates.items():
        fidelity = compare_outputs(fp32_path, path, check_inputs, topk=topk)
        stats[mode] = {"topk_overlap": fidelity.get("topk_overlap", 1.0), "max_abs_diff": fidelity["max_abs_diff"],
                       **measure_latency(ort_session(path), one_request, n=200, warmup=20),
                       "quantized_ops": quantized_ops(path)}
    chosen = pick_dense_layers(stats)
    source = fp32_path if chosen == "fp32" else candidates[chosen]
    out_path.write_bytes(Path(source).read_bytes())
    for path in candidates.values():
        Path(path).unlink(missing_ok=True)
        Path(str(path) + ".json").unlink(missing_ok=True)
    log.info("int8 for %s: chose %s (%s)", out_path.name, chosen,
             {m: {k: round(v, 4) for k, v in s.items() if isinstance(v, float)} for m, s in stats.items()})
    return {"chosen": chosen, "candidates": stats}


def pick_dense_layers(stats: dict[str, dict]) -> str:
    """"fp32", "dynamic" or "static" from each one's measured fidelity and p50 (see `choose_int8`)."""
    faithful = {mode: s for mode, s in stats.items() if mode != "fp32" and s["topk_overlap"] >= MIN_TOPK_OVERLAP}
    if not faithful:
        return "fp32"
    chosen = pick_best(faithful, min_topk_overlap=MIN_TOPK_OVERLAP, latency_margin=LATENCY_MARGIN)
    return "fp32" if _clearly_faster(stats["fp32"], stats[chosen]) else chosen


def _clearly_faster(a: dict, b: dict) -> bool:
    """``a``'s p50 beats ``b``'s by more than the jitter margin."""
    return a["p50_ms"] < (1 - LATENCY_MARGIN) * b["p50_ms"]
