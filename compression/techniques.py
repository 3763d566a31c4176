"""The other compression techniques the field uses, as options the report card measures.

- Magnitude pruning: the ranker's weights with the smallest |w| (one global threshold over its
  linear layers) are set to zero, no fine-tuning.
- Low-rank factorisation: each linear layer of the ranker and of the user tower's MLP is
  replaced by two thinner ones from its truncated SVD, at the smallest rank keeping ``energy``
  of the squared singular values, wherever that has fewer parameters.
- fp16: the exported ONNX models stored in float16 (inputs and outputs stay float32).

Each builds a variant of the distilled student; `pick_published` keeps one for the served
bundle only when it is cheaper than the plain compressed variant and not shown worse (paired).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import onnx
import torch
from torch import nn

from compression.students import Student
from recsys.evaluate.paired import PairedDecision

log = logging.getLogger(__name__)

PRUNE_SPARSITY = 0.5
SVD_ENERGY = 0.9
# A technique replaces plain compressed only when this much smaller or faster (`pick_published`).
CHEAPER = 0.10


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


# decide(candidate, reference) -> the paired evidence on candidate / reference (`PairedDecision`).
Decide = Callable[[str, str], PairedDecision]


def pick_published(rows: list[dict], candidates: tuple[str, ...], decide: Decide,
                   gate_reference: str | None = None) -> tuple[str, dict[str, str]]:
    """The variant to publish as ``compressed``, and, per candidate technique, why it was or was not kept.

    A technique replaces the plain ``compressed`` variant when it is not *shown* worse than it
    (`PairedDecision`, the gate's rule) and earns its place: at least ``CHEAPER`` smaller or
    faster (p50), and not more than that larger or slower (a few per cent of either is noise on
    this machine); among several such, the smallest (then the fastest) wins: their quality is
    equal on this evidence.

    With ``gate_reference`` (the teacher): when that pick is shown worse than the reference but
    plain ``compressed`` or another candidate is not, the cheapest of those is published instead
    (a retrain should not publish nothing while a compressed variant passes)."""
    by_name = {row["name"]: row for row in rows}
    reasons, winners = {}, []
    for name in (name for name in candidates if name in by_name):
        losses = _losses(by_name[name], by_name["compressed"], decide(name, "compressed"))
        if losses:
            reasons[name] = "not kept: " + "; ".join(losses)
        else:
            winners.append(name)
    chosen = min(winners, key=lambda name: _cost(by_name[name]), default="compressed")
    for name in winners:
        reasons[name] = (f"kept: not shown worse, {CHEAPER:.0%} cheaper" if name == chosen
                         else f"not kept: as good as plain compressed, but {chosen} is cheaper")
    if gate_reference is not None:
        chosen = _rescue_from_gate(by_name, candidates, decide, gate_reference, chosen, reasons)
    log.info("published as compressed: %s (%s)", chosen, reasons)
    return chosen, reasons


def _cost(row: dict) -> tuple[int, float]:
    return row["bytes"], row["latency_p50_ms"]


def _rescue_from_gate(by_name: dict[str, dict], candidates: tuple[str, ...], decide: Decide, reference: str,
                      chosen: str, reasons: dict[str, str]) -> str:
    if not decide(chosen, reference).shown_worse:
        return chosen
    passing = [name for name in ("compressed", *candidates)
               if name in by_name and not decide(name, reference).shown_worse]
    if not passing:
        return chosen
    rescue = min(passing, key=lambda name: _cost(by_name[name]))
    reasons[rescue] = (f"kept: {chosen} misses the gate ({decide(chosen, reference).describe(chosen, reference)}), "
                       f"this one passes it ({decide(rescue, reference).describe(rescue, reference)})")
    return rescue


def damaged(student: Student, noise: float, seed: int = 0) -> Student:
    """A control for the gate: the student with Gaussian noise of ``noise`` x each linear layer's
    weight std added to its ranker (or, without one, to its user tower's MLP). Never published."""
    generator = torch.Generator().manual_seed(seed)
    towers, ranker = student.towers, student.ranker
    if ranker is not None:
        ranker = _perturbed(ranker, noise, generator)
    else:
        towers = copy.deepcopy(towers).eval()
        towers.user_mlp = _perturbed(towers.user_mlp, noise, generator)
    return replace(student, name=f"{student.name}-damaged", towers=towers, ranker=ranker,
                   summary={**student.summary, "damaged": {"noise": noise, "seed": seed}})


def _perturbed(model: nn.Module, noise: float, generator: torch.Generator) -> nn.Module:
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                weight = module.weight
                weight.add_(torch.randn(weight.shape, generator=generator) * noise * weight.std())
    return model


def _losses(row: dict, base: dict, evidence: PairedDecision) -> list[str]:
    """Where ``row`` does worse than the plain compressed variant ``base``."""
    losses = []
    if evidence.shown_worse:
        losses.append("NDCG@10 shown worse: " + evidence.describe(row["name"], base["name"]))
    size, speed = row["bytes"] / base["bytes"], row["latency_p50_ms"] / base["latency_p50_ms"]
    if size > 1 + CHEAPER:
        losses.append(f"{row['bytes']:,} bytes > {1 + CHEAPER:.2f} x {base['bytes']:,}")
    if speed > 1 + CHEAPER:
        losses.append(f"p50 {row['latency_p50_ms']:.3f} ms > {1 + CHEAPER:.2f} x {base['latency_p50_ms']:.3f}")
    if min(size, speed) > 1 - CHEAPER:
        losses.append(f"not {CHEAPER:.0%} cheaper: {size:.2f} x the bytes, {speed:.2f} x the p50")
    return losses
