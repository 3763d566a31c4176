"""The other compression techniques the field uses, as options the report card measures.

- Magnitude pruning: the ranker's weights with the smallest |w| (one global threshold over its
  linear layers) are set to zero, no fine-tuning.
- Low-rank factorisation: each linear layer of the ranker and of the user tower's MLP is
  replaced by two thinner ones from its truncated SVD, at the smallest rank keeping ``energy``
  of the squared singular values, wherever that has fewer parameters.
- fp16: the exported ONNX models stored in float16 (inputs and outputs stay float32).

Each builds a variant of the distilled student; `pick_published` keeps one for the served
bundle only when it beats the plain compressed variant.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import replace
from pathlib import Path

import onnx
import torch
from torch import nn

from compression.students import Student

log = logging.getLogger(__name__)

PRUNE_SPARSITY = 0.5
SVD_ENERGY = 0.9
# A technique must keep this share of the plain compressed variant's NDCG@10 to replace it.
KEEP_QUALITY = 0.995


def pruned(student: Student, sparsity: float = PRUNE_SPARSITY) -> Student:
    """The student with its ranker magnitude-pruned to ``sparsity`` (share of weights zeroed)."""
    ranker = copy.deepcopy(student.ranker).eval()
    weights = [module.weight for module in ranker.modules() if isinstance(module, nn.Linear)]
    magnitudes = torch.cat([w.detach().abs().flatten() for w in weights])
    threshold = torch.quantile(magnitudes, sparsity)
    with torch.no_grad():
        for weight in weights:
            weight.mul_(weight.abs() > threshold)
    zeroed = float(sum(int((w == 0).sum()) for w in weights)) / magnitudes.numel()
    return replace(student, name=f"{student.name}-pruned", ranker=ranker,
                   summary={**student.summary, "pruned": {"sparsity": round(zeroed, 4)}})


def low_rank(student: Student, energy: float = SVD_ENERGY) -> Student:
    """The student with its user MLP's (and ranker's) linear layers factorised where that is smaller."""
    towers = copy.deepcopy(student.towers).eval()
    ranker = None if student.ranker is None else copy.deepcopy(student.ranker).eval()
    report = {}
    for prefix, model in (("user_mlp", towers.user_mlp), ("ranker", ranker)):
        if model is not None:
            report.update(_factorise_all(model, prefix, energy))
    return replace(student, name=f"{student.name}-lowrank", towers=towers, ranker=ranker,
                   summary={**student.summary, "low_rank": {"energy": energy, "layers": report}})


def _factorise_all(model: nn.Module, prefix: str, energy: float) -> dict[str, list[int]]:
    report = {}
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            factorised = factorise(child, energy)
            if factorised is not None:
                setattr(module, child_name, factorised)
                path = ".".join(part for part in (prefix, name, child_name) if part)
                report[path] = [child.in_features, factorised[0].out_features, child.out_features]
    return report


def factorise(linear: nn.Linear, energy: float) -> nn.Sequential | None:
    """``linear`` as (in -> r, no bias) then (r -> out) from its SVD, or None when not smaller."""
    weight = linear.weight.detach()  # [out, in]
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    kept = torch.cumsum(s**2, 0) / (s**2).sum()
    rank = int(torch.searchsorted(kept, torch.tensor(energy)).item()) + 1
    if rank * (linear.in_features + linear.out_features) >= linear.in_features * linear.out_features:
        return None
    first = nn.Linear(linear.in_features, rank, bias=False)
    second = nn.Linear(rank, linear.out_features, bias=linear.bias is not None)
    with torch.no_grad():
        first.weight.copy_(vh[:rank])
        second.weight.copy_(u[:, :rank] * s[:rank])
        if linear.bias is not None:
            second.bias.copy_(linear.bias)
    return nn.Sequential(first, second)


def to_fp16(path: Path) -> None:
    """Rewrite an ONNX model with float16 weights and compute, float32 inputs and outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    onnx.save(model, str(path))


def pick_published(rows: list[dict], candidates: tuple[str, ...],
                   threshold: float | None = None) -> tuple[str, dict[str, str]]:
    """The variant to publish as ``compressed``: a technique replaces the plain one only when it
    keeps ``KEEP_QUALITY`` of its NDCG@10 and is no larger and no slower (p50). Returns the name
    and, per candidate, why it was or was not kept.

    With the gate's ``threshold``: when that pick falls short of ``threshold`` x the teacher's
    NDCG@10 but a candidate reaches it, the best-scoring such candidate is published instead
    (a retrain should not publish nothing while a compressed variant passes)."""
    by_name = {row["name"]: row for row in rows}
    base = by_name["compressed"]
    reasons, winners = {}, []
    for name in (name for name in candidates if name in by_name):
        losses = _losses(by_name[name], base)
        if losses:
            reasons[name] = "not kept: " + "; ".join(losses)
        else:
            winners.append(name)
    chosen = max(winners, key=lambda name: by_name[name]["NDCG@10"], default="compressed")
    for name in winners:
        reasons[name] = ("kept: as good, no larger, no slower" if name == chosen
                         else f"not kept: beats plain compressed, but {chosen} scores a higher NDCG@10")
    if threshold is not None:
        chosen = _rescue_from_gate(by_name, candidates, threshold, chosen, reasons)
    log.info("published as compressed: %s (%s)", chosen, reasons)
    return chosen, reasons


def gate_bar(by_name: dict[str, dict], threshold: float) -> float:
    """The NDCG@10 the published compressed variant must reach: ``threshold`` x the teacher's."""
    return threshold * by_name["teacher-fp32"]["NDCG@10"]


def _rescue_from_gate(by_name: dict[str, dict], candidates: tuple[str, ...], threshold: float, chosen: str,
                      reasons: dict[str, str]) -> str:
    bar = gate_bar(by_name, threshold)
    if by_name[chosen]["NDCG@10"] >= bar:
        return chosen
    passing = [name for name in candidates if name in by_name and by_name[name]["NDCG@10"] >= bar]
    if not passing:
        return chosen
    rescue = max(passing, key=lambda name: by_name[name]["NDCG@10"])
    reasons[rescue] = (f"kept: {chosen} misses the gate (NDCG@10 {by_name[chosen]['NDCG@10']:.4f} < {bar:.4f}), "
                       f"this one passes it ({by_name[rescue]['NDCG@10']:.4f})")
    return rescue


def _losses(row: dict, base: dict) -> list[str]:
    """Where ``row`` does worse than the plain compressed variant ``base``."""
    losses = []
    if row["NDCG@10"] < KEEP_QUALITY * base["NDCG@10"]:
        losses.append(f"NDCG@10 {row['NDCG@10']:.4f} < {KEEP_QUALITY} x {base['NDCG@10']:.4f}")
    if row["bytes"] > base["bytes"]:
        losses.append(f"{row['bytes']:,} bytes > {base['bytes']:,}")
    if row["latency_p50_ms"] > base["latency_p50_ms"]:
        losses.append(f"p50 {row['latency_p50_ms']:.3f} ms > {base['latency_p50_ms']:.3f}")
    return losses
