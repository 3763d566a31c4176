"""``--model`` specs -> recommenders: a baseline by name, a trained model directory, or a bundle.

A bundle is scored through ONNX Runtime + FAISS, the code path the server runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from recsys.evaluate.baselines import BASELINES, fit_baseline
from recsys.pipeline.contract import ModelSpecError, Recommender
from recsys.split import Split

MODEL_STAGES = ("full", "retrieval")  # what of a two-stage model to score: retrieve -> rank, or retrieve only
# Directory-model loaders register here (checkpoints, bundles):
# (predicate, loader(path, split, model_stage, allow_seen)).
DIRECTORY_LOADERS: list[tuple[Callable[[Path], bool], Callable[[Path, Split, str, bool], Recommender]]] = []


def _load_model_dir(path: Path, split: Split, model_stage: str = "full", allow_seen: bool = False) -> Recommender:
    from recsys.pipeline.recommend import PipelineRecommender
    from recsys.train.model_dir import check_same_data, load_trained
    from recsys.train.torch_pipeline import pipeline_from_trained

    trained = load_trained(path)
    check_same_data(trained, split.users, split.items, path)
    pipeline = pipeline_from_trained(trained, path, with_ranker=model_stage == "full")
    recommender = PipelineRecommender(pipeline)
    what = "two-tower + ranker" if pipeline.has_ranker else "two-tower"
    recommender.display_name = f"{what} ({path.name})"
    return recommender


def _is_model_dir(path: Path) -> bool:
    from recsys.train.model_dir import is_model_dir

    return is_model_dir(path)


def _is_bundle(path: Path) -> bool:
    from recsys.bundle.load import is_bundle

    return is_bundle(path)


def _load_bundle(path: Path, split: Split, model_stage: str = "full", allow_seen: bool = False) -> Recommender:
    """A bundle scored through ONNX Runtime + FAISS: the code path serving runs.

    A bundle published from the whole log already holds the held-out rows (in its popularity and
    feature tables), so it is refused unless ``allow_seen``; its measured twin is under holdout/."""
    from recsys.bundle.content import knows_everything
    from recsys.bundle.load import load_serving_model
    from recsys.train.model_dir import ModelDirError

    served = load_serving_model(path, precompute_users=False)
    if served.content.users != split.users or served.content.items != split.items:
        raise ModelDirError(f"bundle {served.version} at {path} was built from other data "
                            f"(fingerprint {served.manifest.data_fingerprint}); its id maps do not match this dataset")
    label = f"bundle {served.manifest.kind} {served.version}"
    if knows_everything(served.content):
        if not allow_seen:
            raise ModelSpecError(f"{label} at {path} was published from the whole log (cutoff "
                                 f"{served.runtime['data']['cutoff']}), so it has seen the rows it would be scored "
                                 "on; score its measured twin under the output's holdout/ directory, or pass "
                                 "--allow-seen to score it anyway (the output is labelled)")
        label += " [scored on rows it was built from]"
    recommender = served.recommender()
    if model_stage == "retrieval":
        recommender.pipeline.score_candidates = None
    recommender.display_name = label
    return recommender


DIRECTORY_LOADERS.append((_is_model_dir, _load_model_dir))
DIRECTORY_LOADERS.append((_is_bundle, _load_bundle))


def load_model(spec: str, split: Split, model_stage: str = "full", allow_seen: bool = False) -> Recommender:
    """A baseline by name, or a model/bundle directory (``model_stage`` "retrieval": towers only;
    ``allow_seen``: score a bundle published from the whole log anyway)."""
    if spec in BASELINES:
        return fit_baseline(spec, split)
    path = Path(spec)
    if path.is_dir():
        for matches, loader in DIRECTORY_LOADERS:
            if matches(path):
                return loader(path, split, model_stage, allow_seen)
        from recsys.bundle.manifest import MANIFEST_NAME

        raise ModelSpecError(f"{path} is not a model directory or bundle (no config.json / {MANIFEST_NAME})")
    raise ModelSpecError(f"unknown model {spec!r}: use one of {sorted(BASELINES)} or a model/bundle directory")
