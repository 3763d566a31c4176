"""Export torch modules to ONNX, check the export against PyTorch, and open ORT sessions.

Model-agnostic: the two-tower user and item towers and the ranker all go through
:func:`export_onnx` then :func:`validate_onnx`. Every exported file gets a sidecar
``<file>.json`` recording how it was made (module, example shapes, opset, versions, sha256).

Exporter choice: the legacy TorchScript exporter (``dynamo=False``). torch 2.13 defaults to the
``torch.export``-based exporter, but that path needs ``onnxscript`` (not a project dependency),
builds at opset 18 and down-converts, and takes seconds per model; on our MLP/cross-layer
modules both paths give the same Gemm/Relu/Gather graph, and the TorchScript path names nodes
after module paths (``/mlp/mlp.0/Gemm``), which is what per-layer quantisation decisions key on.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from recsys.bundle.manifest import library_versions, sha256_file
from recsys.pipeline.onnx import ort_session

log = logging.getLogger(__name__)

BATCH_AXIS = "batch"
EXPORTER = "torch.onnx.export(dynamo=False)"
# The legacy exporter warns on every call that it is deprecated; the choice is deliberate (module doc).
_LEGACY_EXPORTER_WARNINGS = (r".*legacy TorchScript-based ONNX export.*", r"The feature will be removed.*")


class ExportValidationError(ValueError):
    """ONNX Runtime disagrees with PyTorch on an exported model (names, shapes or values)."""

    def __init__(self, message: str, *, output_name: str | None = None, max_abs_diff: float | None = None):
        super().__init__(message)
        self.output_name = output_name
        self.max_abs_diff = max_abs_diff


@dataclass(frozen=True)
class ExportInfo:
    """What :func:`export_onnx` wrote and how; also saved as the ``<path>.json`` sidecar."""

    path: str
    input_names: list[str]
    output_names: list[str]
    opset: int
    dynamic_batch: bool
    dynamic_axes: dict[str, dict[str, str]]
    bytes: int
    sha256: str
    n_params: int
    module: str
    example_inputs: dict[str, dict[str, Any]]
    torch_version: str
    onnx_version: str
    exporter: str = EXPORTER
    versions: dict[str, str] = field(default_factory=dict)
    created_at: str = ""


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def file_bytes(path: str | os.PathLike[str]) -> int:
    return Path(path).stat().st_size


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def write_sidecar(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> Path:
    """Write ``<path>.json`` atomically (temp file + os.replace) and return its path."""
    target = sidecar_path(path)
    _write_text_atomically(target, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return target


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    target = sidecar_path(path)
    if not target.exists():
        return None
    return json.loads(target.read_text(encoding="utf-8"))


def export_onnx(
    module: torch.nn.Module,
    example_inputs: dict[str, torch.Tensor],
    output_names: list[str],
    path: str | os.PathLike[str],
    *,
    dynamic_batch: bool = True,
    opset: int = 17,
    extra_dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
) -> ExportInfo:
    """Export ``module`` to ONNX at ``path``; inputs are passed positionally in dict order.

    Input names are the dict keys; with ``dynamic_batch`` axis 0 of every input and output is the
    symbolic ``"batch"`` axis. ``extra_dynamic_axes`` adds more, e.g. the ranker's candidate axis
    ``{"item_vec": {1: "candidates"}, "dense": {1: "candidates"}, "score": {1: "candidates"}}``.
    The file is written to a temp name, checked with ``onnx.checker`` and our own name/axis
    checks, then moved into place with ``os.replace``.
    """
    path = Path(path)
    input_names = list(example_inputs)
    if not input_names or not output_names:
        raise ValueError("export_onnx needs at least one example input and one output name")
    dynamic_axes = _dynamic_axes([*input_names, *output_names], dynamic_batch, extra_dynamic_axes)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        _torch_export(module, example_inputs, output_names, Path(tmp_name), dynamic_axes, opset)
        _check_exported_graph(Path(tmp_name), input_names, output_names, dynamic_axes)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    info = ExportInfo(
        path=str(path),
        input_names=input_names,
        output_names=list(output_names),
        opset=opset,
        dynamic_batch=dynamic_batch,
        dynamic_axes={name: {str(axis): label for axis, label in axes.items()} for name, axes in dynamic_axes.items()},
        bytes=file_bytes(path),
        sha256=sha256_file(path),
        n_params=count_params(module),
        module=f"{type(module).__module__}.{type(module).__qualname__}",
        example_inputs={name: _describe_tensor(t) for name, t in example_inputs.items()},
        torch_version=torch.__version__,
        onnx_version=onnx.__version__,
        versions=library_versions(),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    write_sidecar(path, asdict(info))
    log.info("exported %s (%d params, %d bytes, opset %d) to %s", info.module, info.n_params, info.bytes, opset, path)
    return info


def make_session(path: str | os.PathLike[str], threads: int = 1) -> ort.InferenceSession:
    """CPU session the way serving runs it (one definition, in the serving runtime)."""
    return ort_session(Path(path), threads)


def validate_onnx(
    module: torch.nn.Module,
    path: str | os.PathLike[str],
    inputs: Mapping[str, torch.Tensor | np.ndarray],
    *,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> float:
    """Run PyTorch and ONNX Runtime on the same ``inputs``; return the max abs difference.

    Use a batch size different from the export example to prove the dynamic axis works. Raises
    :class:`ExportValidationError` naming the output (and its max abs difference) when names,
    shapes or values (``|ort - torch| <= atol + rtol * |torch|``) disagree. When the export
    sidecar exists, the result is recorded in it under ``"validation"``.
    """
    session = make_session(path)
    feed = {name: _to_numpy(value) for name, value in inputs.items()}
    _check_input_names(session, feed, path)
    expected_names = [o.name for o in session.get_outputs()]
    torch_outputs = _run_torch(module, feed)
    if len(torch_outputs) != len(expected_names):
        raise ExportValidationError(
            f"{path}: PyTorch returned {len(torch_outputs)} outputs but the ONNX graph has {expected_names}; "
            "re-export with one output name per returned tensor"
        )
    ort_outputs = session.run(expected_names, feed)
    _warn_if_example_batch(path, feed)
    max_diff = 0.0
    for name, expected, got in zip(expected_names, torch_outputs, ort_outputs, strict=True):
        max_diff = max(max_diff, _compare_output(name, expected, got, atol, rtol, path))
    _record_validation(path, feed, max_diff, atol, rtol)
    log.info("validated %s: max abs diff %.3g over %d outputs (atol=%g, rtol=%g)",
             path, max_diff, len(expected_names), atol, rtol)
    return max_diff


def _torch_export(
    module: torch.nn.Module,
    example_inputs: dict[str, torch.Tensor],
    output_names: list[str],
    tmp_path: Path,
    dynamic_axes: dict[str, dict[int, str]],
    opset: int,
) -> None:
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            for message in _LEGACY_EXPORTER_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
            torch.onnx.export(
                module,
                tuple(example_inputs.values()),
                str(tmp_path),
                input_names=list(example_inputs),
                output_names=list(output_names),
                opset_version=opset,
                dynamic_axes=dynamic_axes or None,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        module.train(was_training)


def _dynamic_axes(names: list[str], dynamic_batch: bool,
                  extra: Mapping[str, Mapping[int, str]] | None) -> dict[str, dict[int, str]]:
    unknown = sorted(set(extra or {}) - set(names))
    if unknown:
        raise ValueError(f"extra_dynamic_axes names {unknown} are neither example inputs nor outputs {names}")
    axes: dict[str, dict[int, str]] = {name: {0: BATCH_AXIS} if dynamic_batch else {} for name in names}
    for name, more in (extra or {}).items():
        axes[name].update(more)
    return {name: named for name, named in axes.items() if named}


def _check_exported_graph(path: Path, input_names: list[str], output_names: list[str],
                          dynamic_axes: dict[str, dict[int, str]]) -> None:
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    graph_inputs = [i.name for i in model.graph.input]
    graph_outputs = [o.name for o in model.graph.output]
    if graph_inputs != input_names:
        missing = [name for name in input_names if name not in graph_inputs]
        raise ExportValidationError(
            f"exported graph inputs {graph_inputs} != example inputs {input_names}; the exporter drops inputs "
            f"forward() never uses ({missing}): remove them from example_inputs or use them in forward()"
        )
    if graph_outputs != list(output_names):
        raise ExportValidationError(
            f"exported graph outputs {graph_outputs} != output_names {output_names}: "
            "give one name per tensor forward() returns"
        )
    values = {v.name: v for v in [*model.graph.input, *model.graph.output]}
    fixed = [f"{name}[{axis}]" for name, axes in dynamic_axes.items() for axis, label in axes.items()
             if _dim(values[name], axis) != label]
    if fixed:
        raise ExportValidationError(
            f"axes {fixed} did not come out dynamic; forward() probably hard-codes a size "
            "(e.g. view(32, -1)): use view(x.shape[0], -1) or reshape(-1, ...)"
        )


def _dim(value: onnx.ValueInfoProto, axis: int) -> str | int | None:
    dims = value.type.tensor_type.shape.dim
    if axis >= len(dims):
        return None
    return dims[axis].dim_param or dims[axis].dim_value


def _describe_tensor(tensor: torch.Tensor) -> dict[str, Any]:
    return {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}


def _to_numpy(value: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(value)


def _run_torch(module: torch.nn.Module, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            result = module(*(torch.from_numpy(array) for array in feed.values()))
    finally:
        module.train(was_training)
    if isinstance(result, torch.Tensor):
        result = [result]
    elif isinstance(result, Mapping):
        result = list(result.values())
    return [t.detach().cpu().numpy() for t in result]


def _check_input_names(session: ort.InferenceSession, feed: Mapping[str, np.ndarray], path: Any) -> None:
    expected = [i.name for i in session.get_inputs()]
    if list(feed) != expected:
        raise ExportValidationError(
            f"{path}: inputs {list(feed)} do not match the graph's inputs {expected}; "
            "pass the same names, in the same order, as the example_inputs used for export"
        )


def _compare_output(name: str, expected: np.ndarray, got: np.ndarray, atol: float, rtol: float, path: Any) -> float:
    if expected.shape != got.shape:
        raise ExportValidationError(
            f"{path}: output {name!r} has shape {got.shape} in ONNX Runtime but {expected.shape} in PyTorch; "
            "check that forward() does not bake the example batch size into a reshape",
            output_name=name,
        )
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    max_diff = float(diff.max()) if diff.size else 0.0
    if not np.isfinite(max_diff) or np.any(diff > atol + rtol * np.abs(expected)):
        raise ExportValidationError(
            f"{path}: output {name!r} differs from PyTorch by max abs diff {max_diff:.3g} "
            f"(atol={atol:g}, rtol={rtol:g}); re-export after module.eval() and check for ops the exporter "
            "does not map faithfully (in-place ops, data-dependent control flow), or that weights did not change "
            "after export",
            output_name=name,
            max_abs_diff=max_diff,
        )
    return max_diff


def _warn_if_example_batch(path: Any, feed: Mapping[str, np.ndarray]) -> None:
    sidecar = read_sidecar(path)
    if not sidecar or not sidecar.get("dynamic_axes"):
        return
    examples = sidecar["example_inputs"]
    if all(list(array.shape) == examples.get(name, {}).get("shape") for name, array in feed.items()):
        log.warning("validating %s at the export example's shapes does not exercise its dynamic axes; "
                    "validate with a different batch size", path)


def _record_validation(path: Any, feed: Mapping[str, np.ndarray], max_diff: float, atol: float, rtol: float) -> None:
    sidecar = read_sidecar(path)
    if sidecar is None:
        return
    batch = int(next(iter(feed.values())).shape[0]) if feed else 0
    sidecar["validation"] = {"max_abs_diff": max_diff, "atol": atol, "rtol": rtol, "batch": batch,
                             "onnxruntime": ort.__version__}
    write_sidecar(path, sidecar)


def _write_text_atomically(path: Path, text: str) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
