"""Teacher -> students -> int8 -> compact index, every variant measured, the gate, the publish."""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from compression.bundle_writer import BundleSpec, WholeLog, publish_bundle, publish_whole_log
from compression.distill import RankerDistillConfig, TowerDistillConfig
from compression.report import write_card
from compression.search import TEACHER_ENCODER, SearchBuildConfig, catalogue_texts, install_search, search_section
from compression.students import StudentConfig, sample_requests, teacher_student, train_student
from compression.techniques import damaged, low_rank, pick_published, pruned
from compression.variants import (
    GateEvents,
    Variant,
    build_variant,
    evaluation_sample,
    grouped_latencies,
    latency_groups,
    measure_variant,
)
from recsys.bundle.publish import current_version, new_staging_dir
from recsys.data.datasets import Dataset
from recsys.evaluate.paired import RULE, PairedDecision, UserScores
from recsys.pipeline.contract import ModelSpecError
from recsys.pipeline.feature_tables import FeatureTables
from recsys.split import Split
from recsys.train.model_dir import RANKING_FEATURES, check_same_data, load_trained

log = logging.getLogger(__name__)

SMALL_CATALOG = 20_000
# The bundles the card and the gate measured (histories without the held-out rows) live under
# OUT/holdout/; OUT/teacher and OUT/compressed hold the same models filled from the whole log.
HOLDOUT_DIR = "holdout"


class GateFailed(RuntimeError):
    """The compressed pipeline was shown worse than the gate allows: nothing new is served, or, on
    a first build with nothing served yet, the teacher is (the message says which)."""


@dataclass
class CompressConfig:
    student: StudentConfig = field(default_factory=StudentConfig)
    # None: the distilled student's towers learn from the data alone (the default: see --tower-distill-weight)
    distill: TowerDistillConfig | None = None
    ranker_distill: RankerDistillConfig | None = field(default_factory=RankerDistillConfig)
    threshold: float = 0.97
    # > 0: also measure "compressed-damaged", the distilled student with this much noise on its
    # ranker's weights (`damaged`): a control the gate should refuse; never published.
    control_noise: float = 0.0
    latency_requests: int = 300
    techniques: bool = True  # also measure pruning and low-rank variants (fp16 is always measured)
    parallel_students: bool = True  # train the undistilled student in a second process
    eval_users: int | None = None
    target_recall: float = 0.95
    publish: bool = True
    reports_dir: Path | None = Path("reports/compression")
    # None: no search index (the bundles answer /search with 404); otherwise built and gated here.
    search: SearchBuildConfig | None = field(default_factory=SearchBuildConfig)

    def to_dict(self) -> dict:
        return {**asdict(self), "reports_dir": str(self.reports_dir)}


def search_for(dataset: Dataset, split: Split, out: Path, cfg: CompressConfig) -> dict | None:
    """The search section (`compression.search`), or None without a catalogue text to search."""
    if cfg.search is None:
        return None
    texts = catalogue_texts(dataset.items, split.items)
    if texts is None:
        log.info("no search index: %s has no catalogue text column", dataset.name)
        return None
    return search_section(texts, dataset.items, split.items, out / "variants" / "search", cfg.search, cfg.threshold)


def index_factories(n_items: int, dim: int) -> tuple[str, str]:
    """(SQ8 choice, PQ choice): plain scans for small catalogs, IVF-partitioned ones for large."""
    # 8-bit PQ codebooks need >= 256 training vectors per sub-quantiser; tiny catalogs use 4 bits.
    pq = f"PQ{max(1, dim // 4)}" + ("" if n_items >= 1024 else "x4")
    if n_items < SMALL_CATALOG:
        return "SQ8", pq
    # "np" skips polysemous training: minutes of build time for a knob we never use.
    return "IVF{auto},SQ8", f"IVF{{auto}},{pq}np"


# Variants that may replace "compressed" in the published bundle, when they are cheaper and not
# shown worse (techniques.py).
TECHNIQUES = ("compressed-pq", "compressed-pruned", "compressed-lowrank")
CONTROL = "compressed-damaged"
TEACHER = "teacher-fp32"


def plan_variants(teacher, nokd, kd, n_items: int, cfg: CompressConfig) -> list[Variant]:
    sq8, pq = index_factories(n_items, kd.towers.cfg.dim)
    recall = cfg.target_recall
    variants = [
        Variant("teacher-fp32", teacher, BundleSpec("teacher", "Flat")),
        Variant("student-fp32-nokd", nokd, BundleSpec("student", "Flat")),
        Variant("student-fp32", kd, BundleSpec("student", "Flat")),
        Variant("student-fp16", kd, BundleSpec("student", "Flat", fp16=True)),
        Variant("student-int8-flat", kd, BundleSpec("compressed", "Flat", int8=True)),
        Variant("compressed", kd, BundleSpec("compressed", sq8, int8=True, target_recall=recall)),
        Variant("compressed-pq", kd, BundleSpec("compressed", pq, int8=True, target_recall=recall)),
    ]
    if cfg.control_noise > 0:
        variants.append(Variant(CONTROL, damaged(kd, cfg.control_noise, cfg.student.seed),
                                BundleSpec("compressed", sq8, int8=True, target_recall=recall)))
    if not cfg.techniques:
        return variants
    if kd.ranker is not None:
        variants.append(Variant("compressed-pruned", pruned(kd), BundleSpec("compressed", sq8, int8=True,
                                                                             target_recall=recall)))
    variants.append(Variant("compressed-lowrank", low_rank(kd), BundleSpec("compressed", sq8, int8=True,
                                                                           target_recall=recall)))
    return variants


def variant_dir(out: Path, name: str) -> Path:
    """Teacher and compressed are staged inside their bundle roots (same filesystem, atomic publish)."""
    if name == "teacher-fp32":
        return new_staging_dir(out / "teacher")
    if name == "compressed":
        return new_staging_dir(out / "compressed")
    directory = out / "variants" / name
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def gate(rows: list[dict], decide, threshold: float, published: str = "compressed") -> dict:
    """The gate's record: the published variant against the teacher, paired (`PairedDecision`)."""
    by_name = {row["name"]: row for row in rows}
    evidence = decide(published, TEACHER)
    return {"threshold": threshold, "variant": published, "teacher_ndcg": by_name[TEACHER]["NDCG@10"],
            "compressed_ndcg": by_name[published]["NDCG@10"], **evidence.to_dict(),
            "passed": not evidence.shown_worse, "rule": RULE, "decision": evidence.describe(published, "teacher")}


def controls(rows: list[dict], decide) -> dict:
    """The gate's decision on the damaged control, when it was measured."""
    if CONTROL not in {row["name"] for row in rows}:
        return {}
    evidence = decide(CONTROL, TEACHER)
    return {CONTROL: {**evidence.to_dict(), "refused": evidence.shown_worse,
                      "decision": evidence.describe(CONTROL, "teacher")}}


ALONE, DISTILLED = "student-fp32-nokd", "student-fp32"


def distillation(rows: list[dict], decide) -> dict:
    """What distillation bought: the distilled student against the same student trained alone
    (paired over the gate's events), and the share of the teacher-student gap it closed,
    (distilled - alone) / (teacher - alone): 1 = the teacher's quality, 0 = nothing transferred."""
    by_name = {row["name"]: row["NDCG@10"] for row in rows}
    teacher, alone, distilled = by_name[TEACHER], by_name[ALONE], by_name[DISTILLED]
    evidence = decide(DISTILLED, ALONE)
    gap = teacher - alone
    return {"teacher": teacher, "alone": alone, "distilled": distilled, "difference": distilled - alone,
            "ratio": evidence.ratio, "interval": list(evidence.interval),
            "gap": gap, "gap_closed": (distilled - alone) / gap if gap > 0 else None}


def ratios(rows: list[dict], published: str = "compressed") -> dict:
    by_name = {row["name"]: row for row in rows}
    teacher, compressed = by_name[TEACHER], by_name[published]
    return {"bytes": compressed["bytes"] / teacher["bytes"],
            "latency_p50": compressed["latency_p50_ms"] / teacher["latency_p50_ms"],
            "latency_p99": compressed["latency_p99_ms"] / teacher["latency_p99_ms"],
            "served_p50": compressed["served_p50_ms"] / teacher["served_p50_ms"],
            "served_p99": compressed["served_p99_ms"] / teacher["served_p99_ms"],
            "NDCG@10": compressed["NDCG@10"] / max(teacher["NDCG@10"], 1e-12)}


def compress(model_dir: Path, dataset: Dataset, split: Split, out: Path, cfg: CompressConfig) -> dict:
    """Run every step; raises GateFailed (after writing the card) when the gate refuses.

    ``split`` is the dataset's split; the models are measured on the events the teacher was
    trained without (`Split.holding_out` with its ``held_out``)."""
    trained = load_trained(model_dir)
    check_same_data(trained, split.users, split.items, model_dir)
    split = split.holding_out(int(trained.config.get("held_out", 1)))
    tables = FeatureTables.load(model_dir / RANKING_FEATURES) if (model_dir / RANKING_FEATURES).exists() else None
    cfg = replace(cfg, student=replace(cfg.student,
                                       disabled_features=resolve_disabled(cfg.student.disabled_features, tables)))
    seed = cfg.student.seed
    requests = sample_requests(split, cfg.latency_requests, seed)
    gate_events = GateEvents.of(evaluation_sample(split, cfg.eval_users, seed), seed)
    teacher = teacher_student(trained, tables)
    nokd, kd = train_students(trained, split, tables, cfg)
    config = {"dataset": dataset.name, "model_dir": str(model_dir), "compress": cfg.to_dict()}
    rows, dirs, scores = [], {}, {}
    for variant in tqdm(plan_variants(teacher, nokd, kd, split.n_items, cfg), desc="variants", unit="variant"):
        dirs[variant.name] = variant_dir(out, variant.name)
        runtime = build_variant(variant, dirs[variant.name], dataset, split, requests, config)
        row, scores[variant.name] = measure_variant(variant.name, dirs[variant.name], gate_events)
        rows.append({**row, "notes": _notes(runtime)})
    groups = latency_groups(list(dirs), (TEACHER, "compressed"), split.n_items)
    latencies = grouped_latencies(dirs, groups, split.users.to_external(requests))
    rows = [{**row, **latencies[row["name"]]} for row in rows]
    decide = _paired(scores, gate_events, cfg.threshold)
    rows = [{**row, "vs_teacher": _vs_teacher(decide, row["name"])} for row in rows]
    published, kept = pick_published(rows, TECHNIQUES, decide, gate_reference=TEACHER)
    search = search_for(dataset, split, out, cfg)
    card = {"dataset": dataset.name, "fingerprint": dataset.fingerprint(), "variants": rows,
            "gate": gate(rows, decide, cfg.threshold, published), "controls": controls(rows, decide),
            "distillation": distillation(rows, decide),
            "ratios": ratios(rows, published), "published_variant": published, "techniques": kept,
            "config": config, "students": {"nokd": nokd.summary, "kd": kd.summary},
            "scored_on": gate_events.describe(),
            "notes": _card_notes(gate_events, len(requests), cfg.student.disabled_features, groups)}
    if search is not None:
        card["search"] = {key: value for key, value in search.items() if key != "dirs"}
    refused = not card["gate"]["passed"]
    first_build = not current_version(out / "compressed")
    if refused:
        card["gate"]["outcome"] = ("refused; first build, so the teacher is published and served instead"
                                   if cfg.publish and first_build else "refused; nothing was published")
    title = f"Compression report card: {dataset.name}"
    write_card(card, out, title)
    if cfg.reports_dir is not None:
        write_card(card, Path(cfg.reports_dir) / dataset.name, title)
    if refused and not (cfg.publish and first_build):
        _discard(dirs)
        raise GateFailed(f"{card['gate']['decision']}: refused, nothing was published (card: {out / 'card.md'})")
    if cfg.publish:
        publishing = [(TEACHER, "teacher")] if refused else [(TEACHER, "teacher"), (published, "compressed")]
        if search is not None:  # the teacher serves the fp32 teacher's search, the compressed the gated one
            for name, _ in publishing:
                install_search(Path(search["dirs"][TEACHER_ENCODER if name == TEACHER else search["served"]]),
                               dirs[name])
        card["measured"], card["published"] = _publish(publishing, dirs, out, dataset, rows, config,
                                                       WholeLog.of(split, trained.item_tokens),
                                                       serve_teacher=refused)
        if published != "compressed" or refused:
            shutil.rmtree(dirs["compressed"], ignore_errors=True)
    if refused:
        raise GateFailed(f"{card['gate']['decision']}: refused; nothing was served yet, so the teacher bundle is "
                         f"published and served instead, as {card['published']['served_instead']} "
                         f"(card: {out / 'card.md'})")
    return card


def _card_notes(gate_events: GateEvents, n_requests: int, disabled_features: str,
                groups: list[list[str]]) -> list[str]:
    return [f"NDCG@10 / HR@10: mean over {gate_events.describe()}, through each bundle as the server loads it "
            "(`recsys.evaluate --events`); [low, high]: 95 % bootstrap interval over users; vs_teacher: NDCG@10 "
            "over the teacher's, with the paired interval the gate decides on. The protocol's last-event "
            "numbers, for comparison with peers: `python -m recsys.evaluate --model OUT/holdout/compressed`",
            f"latency over {n_requests} single requests (user tower + ANN + features + ranker), same run, the "
            "variants taking turns in blocks of 20 requests" + ("" if len(groups) == 1 else
            " within each group loaded together (bounded memory): " + "; ".join(", ".join(g) for g in groups)),
            "latency_*: cold, the user tower and the features' user side run per request; served_*: as the "
            "server answers a known user again (tower output computed at load, user side cached), the same "
            "requests after one warm-up pass",
            _student_features_note(disabled_features)]


def _vs_teacher(decide, name: str) -> list[float]:
    """[ratio, low, high]: the variant's NDCG@10 over the teacher's, paired 95 % interval."""
    evidence = decide(name, TEACHER)
    return [evidence.ratio, *evidence.interval]


def _paired(scores: dict[str, dict[str, UserScores]], gate_events: GateEvents, threshold: float):
    """decide(candidate, reference): paired NDCG@10 evidence over the gate's events (memoised)."""
    cache: dict[tuple[str, str], PairedDecision] = {}

    def decide(candidate: str, reference: str) -> PairedDecision:
        if (candidate, reference) not in cache:
            cache[candidate, reference] = PairedDecision.of(scores[candidate]["NDCG@10"],
                                                            scores[reference]["NDCG@10"], threshold,
                                                            gate_events.resampler)
        return cache[candidate, reference]

    return decide


def _publish(publishing: list[tuple[str, str]], dirs: dict[str, Path], out: Path, dataset: Dataset,
             rows: list[dict], config: dict, whole: WholeLog, serve_teacher: bool) -> tuple[dict, dict]:
    """Each (variant, root): its measured bundle into OUT/holdout/ROOT, the whole-log one into
    OUT/ROOT. ``serve_teacher``: the teacher's whole-log bundle also becomes OUT/compressed's
    current, the root `make serve` serves (a first build the gate refused)."""
    by_name = {row["name"]: row for row in rows}
    measured_paths, published_paths = {}, {}
    for name, root in publishing:
        kind = "teacher" if name == TEACHER else "compressed"
        variant_config, metrics = {**config, "variant": name}, _metrics(by_name[name])
        measured = publish_bundle(dirs[name], out / HOLDOUT_DIR / root, kind=kind, dataset=dataset,
                                  config=variant_config, metrics=metrics)
        roots = [root, "compressed"] if serve_teacher and name == TEACHER else [root]
        for served_root in roots:
            served = publish_whole_log(measured, out / served_root, kind=kind, dataset=dataset, whole=whole,
                                       config=variant_config, metrics=metrics)
            published_paths.setdefault(name, str(served))
            if served_root != root:
                published_paths["served_instead"] = str(served)
            log.info("published %s bundle %s into %s (measured as %s)", name, served, out / served_root, measured)
        measured_paths[name] = str(measured)
    return measured_paths, published_paths


AUTO = "auto"


def resolve_disabled(names: str, tables: FeatureTables | None) -> str:
    """The students' disabled ranker features as explicit names.

    "auto": the teacher's content-overlap features (`FeatureTables.content_features`): on
    ml-100k the students keep their quality without them and answer faster
    (reports/compression/ml-100k/student_features.md, `benchmarks.bench_student_features`); and
    the EASE score, whose table (64 weights per item) would outweigh the rest of a compressed
    bundle and whose user side sums over the whole history: the teacher's ranker logits carry it
    to the student. The gate still checks every run, and "" keeps the teacher's full set."""
    if names.strip() == AUTO:
        return ",".join(tables.content_features() + (["ease_score"] if tables.has_ease else []))\
            if tables is not None else ""
    wanted = {name.strip() for name in names.split(",") if name.strip()}
    known = set(tables.feature_names()) if tables is not None else set()
    if wanted - known:
        raise ModelSpecError(f"--student-disabled-features: unknown ranker features {sorted(wanted - known)}; "
                             f"the teacher's are {sorted(known) or 'none (no ranker)'}")
    return ",".join(sorted(wanted))


def train_students(trained, split: Split, tables: FeatureTables | None, cfg: CompressConfig):
    """(undistilled, distilled) students. They are independent, so with a spare core the
    undistilled one trains in a child process meanwhile (each seeds itself: same result)."""
    nokd_args = ("student-nokd", trained, split, tables, cfg.student, None)
    kd_args = ("student-kd", trained, split, tables, cfg.student, cfg.distill, cfg.ranker_distill)
    if not cfg.parallel_students or (os.cpu_count() or 1) < 2:
        return train_student(*nokd_args), train_student(*kd_args)
    # Plain pickles, made here: multiprocessing's pickler would move the tensors to shared memory
    # from its feeder thread while this thread trains with them (a segfault at 1M items).
    payload = pickle.dumps(nokd_args, protocol=pickle.HIGHEST_PROTOCOL)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = pool.submit(_train_pickled_student, payload)
        kd = train_student(*kd_args)
        return pickle.loads(pending.result()), kd


def _train_pickled_student(payload: bytes) -> bytes:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")  # a spawned child
    return pickle.dumps(train_student(*pickle.loads(payload)), protocol=pickle.HIGHEST_PROTOCOL)


def _metrics(row: dict) -> dict:
    keys = ("HR@10", "NDCG@10", "HR@10_ci", "NDCG@10_ci", "events", "latency_p50_ms", "latency_p99_ms",
            "served_p50_ms", "served_p99_ms", "bytes", "params")
    return {key: row[key] for key in keys}


def _notes(runtime: dict) -> str:
    parts = [f"index {runtime['index']['factory']} {runtime['index']['query_params'] or ''}".strip()]
    for model in ("user_tower", "ranker"):
        if model in runtime:
            info = runtime[model]
            parts.append(f"{model} {info['precision']}" + (f" ({info['dense_layers']} dense)" if "dense_layers" in info
                                                           else ""))
    return "; ".join(parts)


def _student_features_note(disabled: str) -> str:
    kept = f"the teacher's without {disabled.replace(',', ', ')}" if disabled else "all of the teacher's"
    return f"students' ranker features: {kept} (--student-disabled-features)"


def _discard(dirs: dict[str, Path]) -> None:
    for name in ("teacher-fp32", "compressed"):
        shutil.rmtree(dirs.get(name, Path("/nonexistent")), ignore_errors=True)
