# Two commands a newcomer needs: `make serve` (main job) and `make test` (`make test-fast` while editing).
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
DATASET ?= ml-100k
DATA_DIR ?= data
ARTIFACTS ?= artifacts
MODEL_DIR ?= $(ARTIFACTS)/$(DATASET)/model
BUNDLES ?= $(ARTIFACTS)/$(DATASET)/bundles
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1
TRAIN_ARGS ?=
COMPRESS_ARGS ?=

.PHONY: setup test test-fast test-slow lint evaluate train bundles serve bench bench-train clean search-report \
	search-personal bench-search browser page-walk serve-replicas bench-outofcore bench-events scale-plan train-ddp bench-ddp \
	bench-replicas

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

lint: setup
	$(BIN)/ruff check .

# Two tiers: `test-fast` for the edit loop (tiny artifacts, no real datasets, Locust or retrain);
# the end-to-end tests are marked `slow`. `make test` (what CI runs) runs both and times each.
PYTEST := $(BIN)/python -m pytest -q
# The fast tier runs on every core (whole files per worker, so module fixtures are built once);
# the slow tier stays serial: its load tests and servers measure time.
FAST_WORKERS ?= -n auto --dist loadfile
timed = start=$$(date +%s); $(2); status=$$?; echo "$(1) tier: $$(( $$(date +%s) - start )) s"; exit $$status

test: setup lint
	@$(call timed,fast,$(PYTEST) $(FAST_WORKERS) -m "not slow")
	@$(call timed,slow,$(PYTEST) -m slow)

test-fast: setup
	@$(call timed,fast,$(PYTEST) $(FAST_WORKERS) -m "not slow")

test-slow: setup
	@$(call timed,slow,$(PYTEST) -m slow)

evaluate: setup
	$(BIN)/python -m recsys.evaluate --dataset $(DATASET) --model ease --data-dir $(DATA_DIR)

# Teacher towers + ranker; config.json marks a finished run, so an interrupted one is redone.
$(MODEL_DIR)/config.json: | setup
	$(BIN)/python -m recsys.train --dataset $(DATASET) --data-dir $(DATA_DIR) --out $(MODEL_DIR) $(TRAIN_ARGS)

train: $(MODEL_DIR)/config.json

# Teacher and compressed bundles (+ report card). When the gate refuses a first build, the
# teacher is published as compressed/current and the command exits 1 saying so: `serve` goes on
# with it, `bundles` reports the refusal.
$(BUNDLES)/compressed/current: $(MODEL_DIR)/config.json
	$(BIN)/python -m compression --model $(MODEL_DIR) --dataset $(DATASET) --data-dir $(DATA_DIR) \
		--out $(BUNDLES) $(COMPRESS_ARGS)

bundles: $(BUNDLES)/compressed/current

serve: setup
	@$(MAKE) --no-print-directory bundles || test -e $(BUNDLES)/compressed/current
	$(BIN)/python -m serving --bundle $(BUNDLES)/compressed --host $(HOST) --port $(PORT) --workers $(WORKERS)

bench: setup
	$(BIN)/python -m benchmarks.bench_index --n 1000000 --dim 64 --out reports/bench/index
	$(BIN)/python -m benchmarks.bench_pipeline

# Training time, throughput and peak memory against log size (1M items; 1M / 3M / 10M interactions, ~20 min).
bench-train: setup
	$(BIN)/python -m benchmarks.bench_train --ladder --out reports/bench/train

# Search quality on ml-100k's real titles (labels: reports/search/ml-100k/queries.jsonl; ~6 min), and search
# speed over the 1M-item synthetic catalogue with the ml-100k compressed bundle's served encoder.
search-report: setup
	$(BIN)/python -m compression.search --dataset ml-100k --data-dir $(DATA_DIR) \
		--queries reports/search/ml-100k/queries.jsonl --out reports/search/ml-100k

# /search with and without the user, paired over ml-100k's users (their next item as the label).
search-personal: bundles
	$(BIN)/python -m benchmarks.search_personal --bundle $(BUNDLES)/holdout/compressed --dataset $(DATASET) \
		--data-dir $(DATA_DIR) --out reports/search/$(DATASET)/personal

bench-search: bundles
	$(BIN)/python -m benchmarks.bench_search --dataset synthetic-1m --data-dir $(DATA_DIR) \
		--encoder $(BUNDLES)/compressed/current/search/encoder --out reports/search/synthetic-1m

# Debian's Chromium and its ChromeDriver, for the browser test (tests/serving/test_browser.py; .ci/run
# calls this) and `make page-walk`. Without them the browser test skips, except under CI=true.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; }

# N replicas of the served bundles root behind HAProxy on $(PORT) (ops/replicas.py): each follows `current`,
# one reloads at a time, out of rotation while it loads. `apt-get install haproxy` first.
REPLICAS ?= 2
serve-replicas: setup
	@$(MAKE) --no-print-directory bundles || test -e $(BUNDLES)/compressed/current
	$(BIN)/python -m ops.replicas --bundle $(BUNDLES)/compressed --replicas $(REPLICAS) --port $(PORT) \
		$(if $(EVENTS_URL),--events-url '$(EVENTS_URL)',--events-db $(EVENTS_DB))

# Locust through HAProxy to 2 replicas while `make retrain` publishes twice, the log's newest interactions
# replayed as events into a throw-away PostgreSQL (~35 min on ml-100k, +17 min the first time for the start
# bundles in artifacts/bench-replicas): reports/bench/replicas/$(DATASET).
bench-replicas: setup
	$(BIN)/python -m benchmarks.bench_replicas --dataset $(DATASET) --data-dir $(DATA_DIR) \
		--out reports/bench/replicas/$(DATASET)

# The page at / in Chromium (network off) on the served bundle: pick a user, search, similar items, a click;
# screenshots and what the page showed in reports/web/$(DATASET) (the click goes to a throw-away event store).
WALK_USER ?= 196
WALK_QUERY ?= star wars
page-walk: bundles browser
	$(BIN)/python -m ops.browser --bundle $(BUNDLES)/compressed --user $(WALK_USER) --query "$(WALK_QUERY)" \
		--out reports/web/$(DATASET)

# Out-of-core validation, split and training examples on a 100M-interaction synthetic log (DuckDB, 6GB limit):
# ~14 min to generate the log once, ~4 min per run after; peak RSS ~6 GB. Writes reports/bench/outofcore.
bench-outofcore: setup
	$(BIN)/python -m benchmarks.bench_outofcore --interactions 100000000 --out reports/bench/outofcore

# Durable event appends per second, SQLite vs a throw-away PostgreSQL (needs `apt-get install postgresql`).
bench-events: setup
	$(BIN)/python -m benchmarks.bench_events --out reports/bench/events

# The towers data-parallel over N local processes (torchrun, gloo; same global --batch-size), then the ranker
# on rank 0. Across machines: torchrun --nnodes/--rdzv-endpoint (recsys/train/distributed.py).
NPROC ?= 2
train-ddp: setup
	$(BIN)/torchrun --nproc_per_node=$(NPROC) --master_addr 127.0.0.1 -m recsys.train --dataset $(DATASET) \
		--data-dir $(DATA_DIR) --out $(ARTIFACTS)/$(DATASET)/model-ddp $(TRAIN_ARGS)

# torchrun vs one process on ml-100k, 3 seeds paired: validation NDCG@10 and examples/s (~15 min).
bench-ddp: setup
	$(BIN)/python -m benchmarks.bench_ddp --out reports/bench/ddp

# docs/scale.md from the measured reports (load test, index, events, out-of-core, DDP).
scale-plan: setup
	$(BIN)/python -m ops.scale_plan --out docs/scale.md

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# ---- load test and retrain loop ------------------------------------------------------------------
.PHONY: loadtest retrain
LOADTEST_OUT ?= reports/loadtest
LOADTEST_ARGS ?=
DATA ?=
ITEMS ?=
USERS ?=
EVENTS_DB ?= $(DATA_DIR)/events.sqlite
EVENTS_URL ?=
SERVER_URL ?= http://$(HOST):$(PORT)
RETRAIN_ARGS ?=

# Teacher vs compressed vs a no-model ceiling (batched and max_batch=1): server on core 0, Locust on
# core 1 (~10 min); then the overload run (~2 min).
loadtest: bundles
	$(BIN)/python -m loadtest.compare --teacher $(BUNDLES)/teacher --compressed $(BUNDLES)/compressed \
		--dataset $(DATASET) --out $(LOADTEST_OUT) $(LOADTEST_ARGS)
	$(BIN)/python -m loadtest.overload --bundle $(BUNDLES)/compressed --dataset $(DATASET) \
		--out $(LOADTEST_OUT)/overload

# Base log (DATASET, or DATA=log.csv ITEMS=catalog.csv) + the server's feedback events -> train -> compress
# (gate) -> publish into $(BUNDLES) -> hot reload at SERVER_URL (RECSYS_ADMIN_TOKEN). E.g. RETRAIN_ARGS=--fast.
retrain: setup
	$(BIN)/python -m ops.retrain --dataset $(or $(DATA),$(DATASET)) $(if $(ITEMS),--items $(ITEMS)) \
		$(if $(USERS),--users $(USERS)) --data-dir $(DATA_DIR) $(if $(EVENTS_URL),--events-url '$(EVENTS_URL)',--events-db $(EVENTS_DB)) --bundles $(BUNDLES) \
		--server $(SERVER_URL) --train-args='$(TRAIN_ARGS)' --compress-args='$(COMPRESS_ARGS)' $(RETRAIN_ARGS)

# ---- scale ladder (README "Scale"): synthetic catalogues of 10k, 100k and 1M items ----------------------
# `make scale-10k`, `scale-100k`, `scale-1m`: teacher towers (dim 64; the ranker is kept only where it beats
# retrieval on validation), compression (dim-32 students trained one after the other: bounded memory) under a
# memory profile (reports/compression/synthetic-N/memory.*), a load test of both bundles, README results.
SCALE_EPOCHS_10k := 4
SCALE_STEPS_10k := 400
SCALE_EPOCHS ?= $(or $(SCALE_EPOCHS_$*),2)
SCALE_STEPS ?= $(or $(SCALE_STEPS_$*),1500)
SCALE_TRAIN_ARGS ?= --dim 64 --hidden 128 --depth 1 --batch-size 1024 --eval-users 2000 --ranker-examples retriever \
	--ranker-positives-per-user 5 --ranker-epochs 3 --ranker-patience 1 --ranker-eval-users 2000
# No search index at scale: MiniLM would take hours over a million titles (`make bench-search` measures search there).
SCALE_COMPRESS_ARGS ?= --eval-users 2000 --latency-requests 200 --student-dim 32 --sequential --no-search
scale-%: setup
	$(BIN)/python -m recsys.train --dataset synthetic-$* --out $(ARTIFACTS)/synthetic-$*/model $(SCALE_TRAIN_ARGS) \
		--epochs $(SCALE_EPOCHS) --max-steps-per-epoch $(SCALE_STEPS)
	$(BIN)/python -m benchmarks.memory_profile --out reports/compression/synthetic-$*/memory -- \
		$(BIN)/python -m compression --model $(ARTIFACTS)/synthetic-$*/model --dataset synthetic-$* \
		--out $(ARTIFACTS)/synthetic-$*/bundles $(SCALE_COMPRESS_ARGS) --tower-epochs $(SCALE_EPOCHS) \
		--max-steps-per-epoch $(SCALE_STEPS)
	$(BIN)/python -m loadtest.compare --teacher $(ARTIFACTS)/synthetic-$*/bundles/teacher \
		--compressed $(ARTIFACTS)/synthetic-$*/bundles/compressed --dataset synthetic-$* \
		--out reports/loadtest/synthetic-$*
	$(BIN)/python -m ops.readme_results
