"""Shop traffic for the recommendation service, with every response body checked.

    RECSYS_LOADTEST_BUNDLE=artifacts/ml-100k/bundles/compressed \\
        .venv/bin/locust -f loadtest/locustfile.py --headless -u 32 -r 32 --run-time 60s \\
        --host http://127.0.0.1:8000

Mix (``RECSYS_LOADTEST_MIX=full``): /recommend 55% (known users weighted by history length, ~10%
unknown users, a cart to exclude now and then), /search 20% when the bundle has a search index
(one or two words of a catalogue title; half anonymous, half signed in), /similar 20% (popular and
long-tail items, a few unknown ones that must 404), POST /events 5%; without a search index its
share goes to the others. ``MIX=reads`` is the same without POST /events. ``MIX=recommend`` sends
only ``/recommend?k=10`` (what loadtest.compare measures); ``MIX=recommend+search`` sends that and
``/search?k=10`` in equal shares (its light phase). ``RECSYS_LOADTEST_RATE=R`` paces each user at R requests/s
(fixed-rate mode: constant throughput per user, each from a random phase); unset, users loop with
no think time. Other knobs: ``UNKNOWN_SHARE``,
``CHECKS=full|shape``, ``LATENCIES=path.json``, ``MAX_FAIL_RATIO`` (default 0), ``P99_SLO_MS``,
``SEED`` (all ``RECSYS_LOADTEST_*``, see loadtest/traffic.py). Locust exits 1 when the failure
ratio or the p99 SLO is missed.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import time
from urllib.parse import urlencode

import gevent
from locust import FastHttpUser, events, task
from locust.env import Environment

from loadtest.checks import events_problem, recommend_problem, search_problem, similar_problem, unknown_item_problem
from loadtest.latency import SHED_SUFFIX, LatencyRecorder, write_final_csv
from loadtest.traffic import RECOMMEND_KS, LoadConfig, LoadTestConfigError, Population
from recsys.bundle.manifest import BundleError

log = logging.getLogger("loadtest")

FULL_MIX = {"recommend": 55, "search": 20, "similar": 20, "events": 5}
# "reads": the full mix without POST /events, for a run whose events are real ones replayed beside it
# (benchmarks/bench_replicas.py): Locust's random clicks would become the next model's training data.
MIXES = {"full": FULL_MIX, "reads": {action: w for action, w in FULL_MIX.items() if action != "events"},
         "recommend": {"recommend": 1}, "recommend+search": {"recommend": 1, "search": 1}}
SIMILAR_UNKNOWN_SHARE = 0.02
EXCLUDE_SHARE = 0.2
SIGNED_IN_SHARE = 0.5  # searches sent with a user id (the rest are anonymous)


class Shop:
    """Loaded once per Locust process, in the init event."""

    config: LoadConfig
    population: Population
    environment: Environment
    latencies = LatencyRecorder()
    user_numbers = itertools.count()


@events.init.add_listener
def _load(environment: Environment, **_kwargs) -> None:
    Shop.environment = environment
    try:
        Shop.config = LoadConfig.from_env()
        Shop.population = Population.from_bundle(Shop.config.bundle)
    except (LoadTestConfigError, BundleError, OSError) as exc:
        raise SystemExit(f"locustfile: {exc}") from None
    if Shop.config.mix == "recommend+search" and not Shop.population.has_search:
        raise SystemExit(f"locustfile: MIX=recommend+search, but bundle {Shop.population.version} has no search "
                         "index (or no titles to make queries from)")
    log.info("sampling %d known users and %d items from bundle %s; mix=%s, rate=%s req/s per user",
             Shop.population.n_known_users, Shop.population.n_items, Shop.population.version, Shop.config.mix,
             Shop.config.rate or "unpaced")
    # Locust schedules --run-time on the event loop's cached clock, last updated before this
    # module's imports and the bundle load: on a busy machine those take longer than a short
    # run, and the run then ends before its first request. Refresh the clock here.
    gevent.get_hub().loop.update_now()


@events.request.add_listener
def _record_latency(name: str, response_time: float, response=None, **_kwargs) -> None:
    # Shed requests (503) apart, so an overload run reads the accepted requests' latency alone.
    if getattr(response, "status_code", None) == 503:
        name = f"{name} {SHED_SUFFIX}"
    Shop.latencies.record(name, response_time)


@events.spawning_complete.add_listener
def _reset_latencies(**_kwargs) -> None:
    # Mirrors --reset-stats, so the exact percentiles cover the same window as Locust's own.
    if Shop.environment.reset_stats:
        Shop.latencies.reset()


@events.quitting.add_listener
def _finish(environment: Environment, **_kwargs) -> None:
    """Final stats to disk; a missed failure ratio or p99 SLO becomes a non-zero exit code."""
    config = Shop.config
    write_final_csv(environment)
    if config.latencies:
        Shop.latencies.write(config.latencies)
    total = environment.stats.total
    problem = None
    if total.num_requests == 0:
        problem = "no requests were made (is the server up?)"
    elif total.fail_ratio > config.max_fail_ratio:
        problem = (f"{total.num_failures} of {total.num_requests} requests failed "
                   f"({total.fail_ratio:.2%} > allowed {config.max_fail_ratio:.2%})")
    elif config.p99_slo_ms is not None and total.get_response_time_percentile(0.99) > config.p99_slo_ms:
        problem = f"p99 {total.get_response_time_percentile(0.99):.0f} ms > SLO {config.p99_slo_ms:.0f} ms"
    if problem:
        log.error("load test failed: %s", problem)
        environment.process_exit_code = 1


class ShopUser(FastHttpUser):
    def wait_time(self) -> float:
        """Closed loop without a rate; with one, constant throughput per user from a random phase.

        Locust's constant_throughput anchors every user's schedule at the moment it was created,
        and Locust creates a second's worth of users at once, so those users would fire together
        once per period for the whole run: bursts, not a steady rate, and latencies that measure
        the burst (64 users at 3 req/s each saw ~10 ms p50 from a server answering in 0.2 ms).
        """
        if self.period is None:
            return 0.0
        now = time.perf_counter()
        self.slot = max(self.slot + self.period, now)  # like constant_throughput: no catching up
        return self.slot - now

    def on_start(self) -> None:
        self.rng = random.Random(Shop.config.seed * 1_000_003 + next(Shop.user_numbers))
        mix = {action: weight for action, weight in MIXES[Shop.config.mix].items()
               if action != "search" or Shop.population.has_search}
        self.actions, self.action_weights = list(mix), list(mix.values())
        self.content_checks = Shop.config.checks == "full"
        self.period = 1.0 / Shop.config.rate if Shop.config.rate else None
        if self.period:
            gevent.sleep(self.rng.random() * self.period)
        self.slot = time.perf_counter()

    @task
    def one_request(self) -> None:
        action = self.rng.choices(self.actions, self.action_weights)[0]
        getattr(self, action)()

    def recommend(self) -> None:
        people, rng = Shop.population, self.rng
        full_mix = Shop.config.mix == "full"
        k = rng.choice(RECOMMEND_KS) if full_mix else 10
        known = rng.random() >= Shop.config.unknown_share
        if known:
            picked = people.known_user(rng)
            user, seen = picked.user_id, people.seen(picked.row) if self.content_checks else None
        else:
            user, seen = people.unknown_user(rng), (set() if self.content_checks else None)
        excluded: tuple[str, ...] = ()
        if full_mix and rng.random() < EXCLUDE_SHARE:
            excluded = tuple({people.popular_item(rng) for _ in range(rng.randint(1, 3))})
        params = {"user": user, "k": k} | ({"exclude": ",".join(excluded)} if excluded else {})
        name = "/recommend" if known else "/recommend [unknown user]"
        with self.client.get(f"/recommend?{urlencode(params)}", name=name, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}")
                return
            problem = recommend_problem(_json(resp), user=user, k=k, known=known, n_items=people.n_items,
                                        seen=seen, excluded=excluded)
            if problem:
                resp.failure(problem)

    def search(self) -> None:
        people, rng = Shop.population, self.rng
        full_mix = Shop.config.mix == "full"
        k = rng.choice(RECOMMEND_KS) if full_mix else 10
        query = people.search_query(rng)
        user, known, name = None, False, "/search"
        if rng.random() < SIGNED_IN_SHARE:
            known = rng.random() >= Shop.config.unknown_share
            user = people.known_user(rng).user_id if known else people.unknown_user(rng)
            name = "/search [known user]" if known else "/search [unknown user]"
        excluded: tuple[str, ...] = ()
        if full_mix and rng.random() < EXCLUDE_SHARE:
            excluded = tuple({people.popular_item(rng) for _ in range(rng.randint(1, 3))})
        params = {"q": query, "k": k} | ({"user": user} if user else {}) | (
            {"exclude": ",".join(excluded)} if excluded else {})
        with self.client.get(f"/search?{urlencode(params)}", name=name, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}")
                return
            if problem := search_problem(_json(resp), query=query, user=user, k=k, known=known, excluded=excluded,
                                         content=self.content_checks):
                resp.failure(problem)

    def similar(self) -> None:
        people, rng = Shop.population, self.rng
        k = rng.choice(RECOMMEND_KS)
        if rng.random() < SIMILAR_UNKNOWN_SHARE:
            item = people.unknown_item(rng)
            with self.client.get(f"/similar?{urlencode({'item': item, 'k': k})}", name="/similar [unknown item]",
                                 catch_response=True) as resp:
                _settle(resp, unknown_item_problem(resp.status_code, _json(resp)))
            return
        popular = rng.random() < 0.5
        item = people.popular_item(rng) if popular else people.long_tail_item(rng)
        name = "/similar [popular]" if popular else "/similar [long tail]"
        with self.client.get(f"/similar?{urlencode({'item': item, 'k': k})}", name=name,
                             catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}")
                return
            if problem := similar_problem(_json(resp), item=item, k=k, n_items=people.n_items):
                resp.failure(problem)

    def events(self) -> None:
        people, rng = Shop.population, self.rng
        user = people.known_user(rng).user_id if rng.random() >= Shop.config.unknown_share \
            else people.unknown_user(rng)
        batch = [{"user": user, "item": people.popular_item(rng) if rng.random() < 0.7 else people.long_tail_item(rng),
                  "event": people.event_type(rng)} for _ in range(rng.randint(1, 3))]
        payload = batch[0] if len(batch) == 1 else batch
        with self.client.post("/events", json=payload, name="/events", catch_response=True) as resp:
            _settle(resp, events_problem(resp.status_code, _json(resp), len(batch)))


def _settle(resp, problem: str | None) -> None:
    """Mark a response whose status was checked by ``problem`` (so a 404 can be a success)."""
    if problem:
        resp.failure(problem)
    else:
        resp.success()


def _json(resp) -> object:
    try:
        return json.loads(resp.content or b"null")
    except ValueError:
        return None
