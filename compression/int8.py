"""Int8 versions of the served models: row-wise int8 embedding tables inside the user tower, ORT
int8 (dynamic or static QDQ, whichever is more faithful per model) for the dense layers."""

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
    quantize_dynamic_int8,
    quantize_static_int8,
    quantized_ops,
)
from recsys.models.two_tower import TwoTower
from recsys.runtime import ort_session

log = logging.getLogger(__name__)

DENSE_OPS = ("MatMul", "Gemm")


class RowwiseInt8Embedding(nn.Module):
    """An embedding table stored as int8 rows with one float scale per row (4x smaller)."""

    def __init__(self, table: nn.Embedding):
        super().__init__()
        quantized, scales = int8_embedding_table(table.weight.detach().numpy())
        self.register_buffer("quantized", torch.from_numpy(quantized))
        self.register_buffer("scales", torch.from_numpy(scales))

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        index = index.long()  # token ids may come from a narrowed table
        return self.quantized[index].to(torch.float32) * self.scales[index].unsqueeze(-1)


def narrowest_int(values: torch.Tensor) -> torch.dtype:
    """The smallest of int16 / int32 / int64 that holds every value (ids fit int16 in most catalogs)."""
    peak = int(values.abs().max()) if values.numel() else 0
    return next(dtype for dtype in (torch.int16, torch.int32, torch.int64) if peak <= torch.iinfo(dtype).max)


def with_int8_embeddings(towers: TwoTower) -> TwoTower:
    """A copy of the towers whose embedding tables are row-wise int8 and whose item / user token
    tables use the narrowest integer type (the int64 token table was the user tower's largest
    array after int8); the MLPs stay as they are."""
    clone = copy.deepcopy(towers).eval()
    for name in ("item_id", "item_feature", "user_id", "user_feature"):
        setattr(clone, name, RowwiseInt8Embedding(getattr(clone, name)))
    for name in ("item_tokens", "user_tokens"):
        tokens = getattr(clone, name)
        setattr(clone, name, tokens.to(narrowest_int(tokens)))
    return clone


def choose_int8(fp32_path: Path, out_path: Path, calibration: list[dict[str, np.ndarray]],
                check_inputs: dict[str, np.ndarray], topk: int | None) -> dict:
    """Quantise the dense layers both ways, keep the more faithful (then faster) one, record why."""
    candidates = {
        "dynamic": quantize_dynamic_int8(fp32_path, out_path.with_suffix(".dynamic.onnx"), op_types=DENSE_OPS),
        "static": quantize_static_int8(fp32_path, out_path.with_suffix(".static.onnx"), calibration,
                                       op_types=DENSE_OPS),
    }
    stats = {"fp32": {"topk_overlap": 1.0, "max_abs_diff": 0.0,
                      **measure_latency(ort_session(fp32_path), check_inputs, n=100, warmup=10)}}
    for mode, path in candidates.items():
        fidelity = compare_outputs(fp32_path, path, check_inputs, topk=topk)
        stats[mode] = {"topk_overlap": fidelity.get("topk_overlap", 1.0), "max_abs_diff": fidelity["max_abs_diff"],
                       **measure_latency(ort_session(path), check_inputs, n=100, warmup=10),
                       "quantized_ops": quantized_ops(path)}
    stats.pop("fp32") if _int8_gain_is_real(stats) else None
    chosen = pick_best(stats, min_topk_overlap=0.9)
    source = fp32_path if chosen == "fp32" else candidates[chosen]
    out_path.write_bytes(Path(source).read_bytes())
    for path in candidates.values():
        Path(path).unlink(missing_ok=True)
        Path(str(path) + ".json").unlink(missing_ok=True)
    log.info("int8 for %s: chose %s (%s)", out_path.name, chosen,
             {m: {k: round(v, 4) for k, v in s.items() if isinstance(v, float)} for m, s in stats.items()})
    return {"chosen": chosen, "candidates": stats}


def _int8_gain_is_real(stats: dict) -> bool:
    """int8 files are always ~4x smaller; only let fp32 compete when int8 loses fidelity badly."""
    return any(s["topk_overlap"] >= 0.9 for name, s in stats.items() if name != "fp32")
