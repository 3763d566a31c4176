"""ONNX export + int8 quantisation on tiny real models, real torch and real ONNX Runtime."""

from __future__ import annotations

import functools
import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from compression.export import (
    ExportValidationError,
    count_params,
    export_onnx,
    file_bytes,
    make_session,
    sidecar_path,
    validate_onnx,
)
from compression.quantize import (
    choose_fp32_nodes,
    compare_outputs,
    dequantize_rows,
    gemms_as_matmul,
    int8_embedding_table,
    max_reconstruction_error,
    measure_latency,
    node_sensitivity,
    output_layers,
    pick_best,
    quantizable_nodes,
    quantize_dynamic_int8,
    quantize_static_int8,
    quantized_ops,
    topk_overlap,
    weight_dtypes,
)
from recsys.bundle.manifest import sha256_file

N_ITEMS, N_FEATS = 1000, 64
LINEAR_NODES = ["/cross.0/Gemm", "/cross.1/Gemm", "/mlp/mlp.0/Gemm", "/mlp/mlp.2/Gemm", "/mlp/mlp.4/Gemm"]
SCORE_LAYER = "/mlp/mlp.4/Gemm"


class TinyMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x):
        return self.mlp(x)


class CrossRanker(nn.Module):
    """DCN-v2 style: item embedding + features, cross layers x0 * (W x + b) + x, then an MLP."""

    def __init__(self, n_items: int = N_ITEMS, dim: int = 32, hidden: int = 256, n_cross: int = 2):
        super().__init__()
        self.emb = nn.Embedding(n_items, dim)
        width = dim + N_FEATS
        self.cross = nn.ModuleList(nn.Linear(width, width) for _ in range(n_cross))
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, item_idx, feats):
        x0 = torch.cat([self.emb(item_idx), feats], dim=1)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        return self.mlp(x).squeeze(-1)


def ranker_feed(batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"item_idx": rng.integers(0, N_ITEMS, batch).astype(np.int64),
            "feats": rng.standard_normal((batch, N_FEATS)).astype(np.float32)}


def torch_feed(feed: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(value) for name, value in feed.items()}


@pytest.fixture(scope="module")
def ranker():
    torch.manual_seed(0)
    return CrossRanker().eval()


@pytest.fixture(scope="module")
def ranker_fp32(ranker, tmp_path_factory):
    path = tmp_path_factory.mktemp("ranker") / "ranker.onnx"
    export_onnx(ranker, torch_feed(ranker_feed(4, seed=0)), ["score"], path)
    return path


@pytest.fixture(scope="module")
def calibration():
    return [ranker_feed(32, seed=100 + i) for i in range(8)]


@pytest.fixture(scope="module")
def candidates():
    """One user's 200 candidate items: the ranker scores each, serving keeps the top 10."""
    return ranker_feed(200, seed=7)


# --- export -------------------------------------------------------------------------------------

def test_mlp_exports_and_validates_at_another_batch_size(tmp_path):
    torch.manual_seed(0)
    module = TinyMLP()
    path = tmp_path / "mlp.onnx"
    info = export_onnx(module, {"x": torch.randn(4, 32)}, ["score"], path)

    assert validate_onnx(module, path, {"x": torch.randn(7, 32)}) < 1e-4
    sidecar = json.loads(sidecar_path(path).read_text())
    assert sidecar["sha256"] == sha256_file(path) == info.sha256
    assert sidecar["bytes"] == file_bytes(path) == info.bytes
    assert sidecar["n_params"] == count_params(module) == 32 * 64 + 64 + 64 * 64 + 64 + 64 + 1
    assert sidecar["input_names"] == ["x"] and sidecar["output_names"] == ["score"]
    assert sidecar["validation"]["batch"] == 7
    assert info.torch_version == torch.__version__ and info.onnx_version == onnx.__version__
    assert not list(tmp_path.glob(".*.tmp")), "temp files must not be left behind"


def test_two_input_cross_ranker_exports_with_dynamic_batch(ranker, ranker_fp32):
    model = onnx.load(str(ranker_fp32))
    assert [i.name for i in model.graph.input] == ["item_idx", "feats"]
    assert all(v.type.tensor_type.shape.dim[0].dim_param == "batch" for v in [*model.graph.input, *model.graph.output])
    assert validate_onnx(ranker, ranker_fp32, ranker_feed(13, seed=1)) < 1e-4
    assert json.loads(sidecar_path(ranker_fp32).read_text())["example_inputs"]["item_idx"] == {
        "shape": [4], "dtype": "int64"}


class PerCandidateScorer(nn.Module):
    """[B, C, D] candidates -> [B, C] scores, like the ranker: the candidate axis must stay dynamic too."""

    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, user_vec, item_vec):
        return self.mlp(user_vec.unsqueeze(1) * item_vec).squeeze(-1)


def test_extra_dynamic_axis_for_candidates(tmp_path):
    torch.manual_seed(0)
    module = PerCandidateScorer()
    path = tmp_path / "scorer.onnx"
    axes = {"item_vec": {1: "candidates"}, "score": {1: "candidates"}}
    export_onnx(module, {"user_vec": torch.randn(2, 8), "item_vec": torch.randn(2, 5, 8)}, ["score"], path,
                extra_dynamic_axes=axes)

    assert validate_onnx(module, path, {"user_vec": torch.randn(3, 8), "item_vec": torch.randn(3, 11, 8)}) < 1e-4
    assert json.loads(sidecar_path(path).read_text())["dynamic_axes"]["score"] == {"0": "batch", "1": "candidates"}
    with pytest.raises(ValueError, match="neither"):
        export_onnx(module, {"user_vec": torch.randn(2, 8)}, ["score"], path, extra_dynamic_axes={"scores": {1: "c"}})


def test_static_keeps_the_matmul_plus_bias_score_layer_fp32(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "scorer.onnx"
    axes = {"item_vec": {1: "candidates"}, "score": {1: "candidates"}}
    export_onnx(PerCandidateScorer(), {"user_vec": torch.randn(2, 8), "item_vec": torch.randn(2, 5, 8)}, ["score"],
                path, extra_dynamic_axes=axes)
    score_matmul = quantizable_nodes(path, op_types=("MatMul",))[-1]  # 3-D Linear exports as MatMul + Add
    rng = np.random.default_rng(0)
    calibration = [{"user_vec": rng.standard_normal((4, 8), dtype=np.float32),
                    "item_vec": rng.standard_normal((4, 30, 8), dtype=np.float32)}]

    out = quantize_static_int8(path, tmp_path / "scorer.static.onnx", calibration)
    assert score_matmul in output_layers(onnx.load(str(path)))
    assert weight_dtypes(out) == {quantizable_nodes(path, op_types=("MatMul",))[0]: "int8", score_matmul: "float32"}


def test_validation_fails_by_name_when_module_no_longer_matches(tmp_path):
    torch.manual_seed(0)
    module = TinyMLP()
    path = tmp_path / "mlp.onnx"
    export_onnx(module, {"x": torch.randn(4, 32)}, ["score"], path)
    with torch.no_grad():
        module.mlp[4].bias.add_(0.5)

    with pytest.raises(ExportValidationError, match=r"output 'score' .*max abs diff 0\.5") as caught:
        validate_onnx(module, path, {"x": torch.randn(9, 32)})
    assert caught.value.output_name == "score"
    assert caught.value.max_abs_diff == pytest.approx(0.5, abs=1e-5)


def test_export_names_an_input_forward_never_uses(tmp_path):
    class IgnoresFeats(nn.Module):
        def forward(self, x, feats):
            return x * 2

    with pytest.raises(ExportValidationError, match="feats"):
        export_onnx(IgnoresFeats(), {"x": torch.randn(3, 2), "feats": torch.randn(3, 2)}, ["y"], tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_session_runs_single_threaded(ranker_fp32):
    options = make_session(ranker_fp32).get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)


# --- int8 ---------------------------------------------------------------------------------------

def test_gemm_rewrite_keeps_names_and_outputs(ranker_fp32, candidates, tmp_path):
    model = onnx.load(str(ranker_fp32))
    assert gemms_as_matmul(model) == len(LINEAR_NODES)
    assert [n.name for n in model.graph.node if n.op_type == "MatMul"] == LINEAR_NODES
    onnx.save(model, str(tmp_path / "matmul.onnx"))
    assert compare_outputs(ranker_fp32, tmp_path / "matmul.onnx", candidates)["max_abs_diff"] < 1e-5


def assert_faithful_int8(fp32_path, int8_path, candidates):
    """Smaller, really quantised (outputs move) and still ranking the same top 10 of 200."""
    assert file_bytes(int8_path) < 0.4 * file_bytes(fp32_path)
    comparison = compare_outputs(fp32_path, int8_path, candidates, topk=10)
    assert comparison["max_abs_diff"] > 1e-5, "identical outputs: quantisation was a no-op"
    score_scale = np.abs(make_session(fp32_path).run(None, candidates)[0]).mean()
    assert comparison["mean_abs_diff"] < 0.1 * score_scale
    assert comparison["topk_overlap"] >= 0.8
    return comparison


def test_dynamic_int8_quantises_every_linear_layer(ranker_fp32, candidates, tmp_path):
    out = quantize_dynamic_int8(ranker_fp32, tmp_path / "dynamic.onnx")

    ops = quantized_ops(out)
    assert ops["MatMulInteger"] == len(LINEAR_NODES) and ops["DynamicQuantizeLinear"] >= 1
    dtypes = weight_dtypes(out)
    assert all(dtypes[name] == "int8" for name in LINEAR_NODES)
    assert_faithful_int8(ranker_fp32, out, candidates)
    sidecar = json.loads(sidecar_path(out).read_text())
    assert sidecar["mode"] == "dynamic" and sidecar["quantized_ops"] == ops
    assert sidecar["source"]["sha256"] == sha256_file(ranker_fp32)

    linear_only = weight_dtypes(quantize_dynamic_int8(ranker_fp32, tmp_path / "linear.onnx", op_types=("Gemm",)))
    assert linear_only == {**dict.fromkeys(LINEAR_NODES, "int8"), "/emb/Gather": "float32"}


def test_static_int8_quantises_and_keeps_scores_continuous(ranker_fp32, candidates, calibration, tmp_path):
    out = quantize_static_int8(ranker_fp32, tmp_path / "static.onnx", calibration)
    all_int8 = quantize_static_int8(ranker_fp32, tmp_path / "all.onnx", calibration, keep_outputs_fp32=False)

    ops = quantized_ops(out)
    assert ops["QuantizeLinear"] >= 1 and ops["DequantizeLinear"] >= len(LINEAR_NODES)
    dtypes = weight_dtypes(out)
    assert {name: dtypes[name] for name in LINEAR_NODES} == {**dict.fromkeys(LINEAR_NODES, "int8"),
                                                             SCORE_LAYER: "float32"}
    assert dtypes["/emb/Gather"] != "float32"  # QDQ stores the table as an activation: uint8, per tensor
    assert all(weight_dtypes(all_int8)[name] == "int8" for name in LINEAR_NODES)
    assert_faithful_int8(ranker_fp32, out, candidates)
    scores = make_session(out).run(None, candidates)[0]
    bucketed = make_session(all_int8).run(None, candidates)[0]
    assert len(np.unique(scores)) == len(scores) > len(np.unique(bucketed))
    assert json.loads(sidecar_path(out).read_text())["calibration_rows"] == 8 * 32


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_excluded_node_stays_fp32(mode, ranker_fp32, calibration, tmp_path):
    quantize = {"dynamic": quantize_dynamic_int8,
                "static": functools.partial(quantize_static_int8, calibration=calibration, keep_outputs_fp32=False)}
    out = quantize[mode](ranker_fp32, tmp_path / f"{mode}.onnx", exclude_nodes=["/mlp/mlp.2/Gemm"])

    dtypes = weight_dtypes(out)
    assert dtypes["/mlp/mlp.2/Gemm"] == "float32"
    assert all(dtypes[name] == "int8" for name in LINEAR_NODES if name != "/mlp/mlp.2/Gemm")


def test_unknown_exclude_node_is_rejected_with_the_real_names(ranker_fp32, tmp_path):
    with pytest.raises(ValueError, match="quantizable_nodes"):
        quantize_dynamic_int8(ranker_fp32, tmp_path / "q.onnx", exclude_nodes=["mlp.2"])


def test_empty_calibration_says_what_to_pass(ranker_fp32, tmp_path):
    with pytest.raises(ValueError, match="list of feed dicts"):
        quantize_static_int8(ranker_fp32, tmp_path / "q.onnx", iter([]))


def test_sensitivity_finds_the_layer_with_outlier_weights(tmp_path, candidates):
    torch.manual_seed(0)
    module = CrossRanker(hidden=64).eval()
    with torch.no_grad():  # one huge weight per output row wrecks that row's int8 scale
        module.mlp[2].weight[:, 0] = 40.0 * module.mlp[2].weight.abs().max()
    path = tmp_path / "outlier.onnx"
    export_onnx(module, torch_feed(ranker_feed(4, seed=0)), ["score"], path)
    linear = quantizable_nodes(path, op_types=("Gemm",))
    assert linear == LINEAR_NODES

    sensitivity = node_sensitivity(path, candidates, quantize_dynamic_int8, linear)
    assert set(sensitivity) == set(linear)
    assert choose_fp32_nodes(sensitivity, budget=1) == ["/mlp/mlp.2/Gemm"]
    assert choose_fp32_nodes(sensitivity, budget=0) == []
    assert choose_fp32_nodes(sensitivity, budget=5, min_gain=float("inf")) == []


def test_int8_embedding_rows_reconstruct_within_half_a_step():
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((500, 16)).astype(np.float32) * rng.uniform(0.01, 5.0, (500, 1)).astype(np.float32)
    weights[3] = 0.0

    quantized, scales = int8_embedding_table(weights)
    assert quantized.dtype == np.int8 and scales.dtype == np.float32 and scales.shape == (500,)
    rows = np.array([0, 3, 499, 42])
    error = np.abs(dequantize_rows(quantized, scales, rows) - weights[rows])
    assert np.all(error <= scales[rows, None] / 2 + 1e-6)
    assert np.all(dequantize_rows(quantized, scales, [3]) == 0.0)
    assert max_reconstruction_error(weights, quantized, scales) <= scales.max() / 2 + 1e-6
    assert np.abs(quantized).max() == 127


def test_topk_overlap_known_answer():
    a = np.array([[5.0, 4, 3, 2, 1], [1, 2, 3, 4, 5]])
    b = np.array([[5.0, 4, 1, 2, 3], [1, 2, 3, 4, 5]])
    assert topk_overlap(a, b, 3) == pytest.approx((2 / 3 + 1) / 2)
    assert topk_overlap(a[0], a[0], 5) == 1.0
    with pytest.raises(ValueError):
        topk_overlap(a, b, 6)


def test_pick_best_prefers_fidelity_then_latency():
    variants = {"fp32": {"topk_overlap": 1.0, "max_abs_diff": 0.0, "p50_ms": 0.5},
                "dynamic": {"topk_overlap": 0.95, "max_abs_diff": 0.01, "p50_ms": 0.4},
                "static": {"topk_overlap": 0.7, "max_abs_diff": 0.05, "p50_ms": 0.3}}
    assert pick_best(variants) == "dynamic"
    assert pick_best(variants, min_topk_overlap=0.6) == "static"
    assert pick_best(variants, max_abs_diff=0.001) == "fp32"
    with pytest.raises(ValueError, match="fp32"):
        pick_best({k: v for k, v in variants.items() if k != "fp32"}, min_topk_overlap=0.99)


def test_pick_best_lets_fidelity_break_latency_near_ties():
    variants = {"dynamic": {"topk_overlap": 0.96, "max_abs_diff": 0.014, "p50_ms": 0.97},
                "static": {"topk_overlap": 0.93, "max_abs_diff": 0.025, "p50_ms": 0.95}}
    assert pick_best(variants) == "dynamic"
    assert pick_best(variants, latency_margin=0.0) == "static"


def test_measure_latency_reports_percentiles(ranker_fp32):
    result = measure_latency(make_session(ranker_fp32), ranker_feed(8, seed=2), n=20, warmup=2)
    assert 0 < result["p50_ms"] <= result["p99_ms"] and result["n"] == 20


def test_int8_user_tower_stays_close_to_the_fp32_tower(checkerboard, checkerboard_split):
    """Row-wise int8 tables in the user tower: ~4x smaller tables, vectors within int8 rounding."""
    from compression.int8 import int8_user_tower
    from recsys.models.two_tower import UserTower
    from tests.fixtures.models import train_tiny

    model = train_tiny(checkerboard_split, checkerboard, epochs=2).model.eval()
    users1 = torch.arange(1, 6)
    history1 = torch.from_numpy(checkerboard_split.user_history("test").recent[:5, -model.cfg.history_len:]
                                .astype(np.int64) + 1)
    fp32, int8 = UserTower(model), int8_user_tower(model)
    with torch.no_grad():
        exact, approx = fp32(users1, history1), int8(users1, history1)
    assert int8.item_table.quantized.dtype == torch.int8
    assert int8.item_table.quantized.shape == fp32.item_table.weights.shape
    cosine = torch.nn.functional.cosine_similarity(exact, approx, dim=-1)
    assert cosine.min() > 0.99, cosine


@pytest.mark.parametrize(("fp32_ms", "dynamic", "static", "expected"), [
    (1.0, (0.99, 0.5), (0.99, 0.6), "dynamic"),  # both faithful, dynamic fastest, fp32 slower
    (1.0, (0.99, 0.5), (0.80, 0.4), "dynamic"),  # static faster but not faithful enough
    (1.0, (0.97, 0.52), (0.99, 0.5), "static"),  # as fast within the margin: the more faithful
    (0.3, (0.99, 0.5), (0.99, 0.45), "fp32"),  # tiny layers: int8 is slower than fp32
    (0.42, (0.99, 0.5), (0.99, 0.45), "static"),  # fp32 ahead by less than the jitter margin
    (1.0, (0.5, 0.3), (0.6, 0.3), "fp32"),  # no int8 version is faithful
])
def test_dense_layers_pick_fidelity_then_speed_and_fp32_when_int8_does_not_pay(fp32_ms, dynamic, static, expected):
    from compression.int8 import pick_dense_layers

    stats = {"fp32": {"topk_overlap": 1.0, "max_abs_diff": 0.0, "p50_ms": fp32_ms},
             "dynamic": {"topk_overlap": dynamic[0], "max_abs_diff": 0.01, "p50_ms": dynamic[1]},
             "static": {"topk_overlap": static[0], "max_abs_diff": 0.01, "p50_ms": static[1]}}
    assert pick_dense_layers(stats) == expected


def test_a_dynamic_int8_model_answers_each_row_as_it_would_alone(ranker_fp32, tmp_path):
    """Dynamic int8 scales activations by the whole batch: served batches and evaluation batches
    run such a model row by row, so no answer depends on the rows run with it."""
    from recsys.pipeline.onnx import OnnxModel, is_batch_dependent

    class Scorer(OnnxModel):
        output = "score"

    dynamic = quantize_dynamic_int8(ranker_fp32, tmp_path / "dynamic.onnx")
    feed = ranker_feed(64, seed=3)
    feed["feats"][0] *= 50.0  # one extreme row widens the batch's activation range
    alone = np.concatenate([Scorer(dynamic).run({name: value[row:row + 1] for name, value in feed.items()})
                            for row in range(64)])
    assert is_batch_dependent(dynamic) and not is_batch_dependent(ranker_fp32)
    assert not np.array_equal(Scorer(dynamic).session.run(["score"], feed)[0], alone)  # the hazard is real
    np.testing.assert_array_equal(Scorer(dynamic).run(feed), alone)
