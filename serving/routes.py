"""The HTTP endpoints. Limits come from ``Settings``, so each app's OpenAPI schema states its own.

The hot endpoints (/recommend, /similar, /search) are ``async``: they parse and validate the
request on the event loop, then await the worker's `Batcher`, which answers everything waiting
with one pass of the model (`serving.model_calls`); past a full queue they are shed before parsing
(`serving.batcher.ShedWhenFull` on ``MODEL_ROUTES``). /events and /admin/reload block (fsync,
loading a bundle), so they are plain ``def`` and run in the thread pool. Responses are declared as
models (for the OpenAPI schema) but written as pre-serialised JSON;
benchmarks/bench_response_encoding.py measures why. Every route documents its 503: no model yet,
or shed load (``Retry-After``).
"""

# No `from __future__ import annotations` here: FastAPI must evaluate the Annotated aliases that
# build_router defines per app (limits from Settings), and string annotations cannot see them.
import hmac
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from recsys.data.events import Event, EventLog
from recsys.pipeline.request import RequestError, request_time
from recsys.pipeline.served import NoSearchIndex, Recommendation, UnknownItemError
from recsys.search.text import MAX_QUERY_CHARS
from serving.batcher import Batcher
from serving.errors import AdminDisabled, InvalidRequest, NotInBundle, NotReady, Unauthorized
from serving.metrics import CONTENT_TYPE_LATEST, ServingMetrics
from serving.model_calls import ModelCall, RecommendCall, SearchCall, SimilarCall
from serving.overlay import OverlayFeeder
from serving.reports import PNG, ReportName, read_report
from serving.schemas import (
    ID_PATTERN,
    PREFIX_PATTERN,
    TIME_DESCRIPTION,
    TIME_PATTERN,
    ErrorResponse,
    EventIn,
    EventsAccepted,
    ExplainResponse,
    HealthResponse,
    ItemExplanation,
    ItemScore,
    ReadyResponse,
    RecommendResponse,
    ReloadRequest,
    ReloadResponse,
    SearchResponse,
    SimilarResponse,
    UserEntry,
    UsersResponse,
    VersionResponse,
    event_in_model,
    events_body,
    recommend_request_model,
)
from serving.settings import Settings
from serving.state import ModelState

MODEL_ROUTES = ("/recommend", "/similar", "/search")  # the routes that go through the batcher

JSON = "application/json"
_HEALTHY = HealthResponse().model_dump_json().encode()


@dataclass
class Services:
    """What the endpoints use; the lifespan fills in ``events``."""

    settings: Settings
    state: ModelState
    metrics: ServingMetrics
    batcher: Batcher
    events: EventLog | None = None
    feeder: OverlayFeeder | None = None


def json_response(body: bytes, status: int = 200) -> Response:
    return Response(body, status, media_type=JSON)


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse} for status in statuses}


# The HTTP layer refuses request lines over 64 KiB with a plain-text 400; a character may take 12
# bytes percent-encoded, so a GET exclusion list stops well before that.
MAX_QUERY_EXCLUDE_CHARS = 4096

RECOMMEND_QUERY = frozenset({"user", "k", "exclude", "at"})
SEARCH_QUERY = ("q", "user", "k", "exclude")
EXPLAIN_QUERY = ("user", "items", "n")
USERS_QUERY = ("prefix", "limit")
MAX_EXPLAIN_ITEMS = 100  # a page's worth of recommendations
MAX_EXPLAIN_REASONS = 20
MAX_USERS_LIMIT = 200


def query_context(params: Mapping[str, str], columns: tuple[str, ...]) -> dict[str, float]:
    """The bundle's context columns among the query parameters; any other unknown parameter is an error."""
    unknown = sorted(set(params) - RECOMMEND_QUERY - set(columns))
    if unknown:
        raise InvalidRequest(f"query.{unknown[0]}: unknown parameter; this bundle's context parameters are "
                             f"{list(columns) or 'none'}")
    return {name: _finite(f"query.{name}", params[name]) for name in columns if name in params}


def refuse_unknown_parameters(params: Mapping[str, str], known: tuple[str, ...]) -> None:
    """A misspelt parameter (``query=``, ``limit=``) is an error, as on /recommend, not silently ignored."""
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise InvalidRequest(f"query.{unknown[0]}: unknown parameter; this endpoint takes {list(known)}")


def body_context(values: dict[str, float], columns: tuple[str, ...]) -> dict[str, float]:
    unknown = sorted(set(values) - set(columns))
    if unknown:  # any name is valid in the schema: what the served bundle reads can change at a reload
        raise NotInBundle(f"body.context.{unknown[0]}: not a context column of the served bundle "
                          f"({list(columns) or 'it has none'}; GET /version lists them)")
    return {name: _finite(f"body.context.{name}", value) for name, value in values.items()}


def _finite(where: str, raw: str | float) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(f"{where}: expected a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise InvalidRequest(f"{where}: expected a finite number, got {raw!r}")
    return value


def parse_time(where: str, raw: float | str | None, real_time: bool) -> float | None:
    try:
        value = request_time(raw, real_time)
    except RequestError as exc:
        raise InvalidRequest(f"{where}: {exc}") from None
    if value is not None and not math.isfinite(value):
        raise InvalidRequest(f"{where}: expected a finite time, got {raw!r}")
    return value


def split_ids(raw: str | None) -> list[str]:
    """``"a,b,,c"`` -> ``["a", "b", "c"]``. The query's length (`MAX_QUERY_EXCLUDE_CHARS`) is the
    only limit: an id longer than any id the bundle knows is simply never matched."""
    return [part for part in raw.split(",") if part] if raw else []


def explained_ids(raw: str) -> list[str]:
    """/explain's ``items``: each id once, in the order sent, 1 to `MAX_EXPLAIN_ITEMS` of them."""
    ids = list(dict.fromkeys(split_ids(raw)))
    if not ids:
        raise InvalidRequest("query.items: no item id; send comma-separated item ids, e.g. items=a,b")
    if len(ids) > MAX_EXPLAIN_ITEMS:
        raise InvalidRequest(f"query.items: {len(ids)} distinct ids; at most {MAX_EXPLAIN_ITEMS} per request")
    return ids


def item_scores(rec: Recommendation) -> list[ItemScore]:
    titles = rec.titles if rec.titles is not None else [None] * len(rec.items)
    return [ItemScore(item_id=str(item), score=score, title=title)
            for item, score, title in zip(rec.items, rec.scores, titles, strict=True)]


def build_router(services: Services) -> APIRouter:
    settings, state, metrics = services.settings, services.state, services.metrics
    router = APIRouter()

    def external_id(what: str, note: str = "") -> Any:
        return Query(min_length=1, max_length=settings.max_id_length, pattern=ID_PATTERN,
                     description=f"{what} id{note}")

    UserId = Annotated[str, external_id("user")]
    SearchUserId = Annotated[str | None, external_id("user", "; orders the matches by their taste")]
    ItemId = Annotated[str, external_id("item")]
    K = Annotated[int, Query(ge=1, le=settings.max_k, description="how many items to return")]

    def exclude_ids(note: str = "") -> Any:
        return Query(max_length=min(settings.max_exclude * (settings.max_id_length + 1), MAX_QUERY_EXCLUDE_CHARS),
                     description=f"comma-separated item ids never to return (e.g. the cart){note}")

    Exclude = Annotated[str | None, exclude_ids("; a longer list goes in the body of POST /recommend (up to "
                                                f"{settings.max_exclude} ids)")]
    SearchExclude = Annotated[str | None, exclude_ids()]
    SearchText = Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS, pattern=ID_PATTERN,
                                      description="what the shopper typed: words of a title, a genre, a "
                                                  "description; a visible character, no control characters")]
    EventModel = event_in_model(settings.max_id_length)
    Events = Annotated[events_body(EventModel, settings.max_events_per_request), Body()]

    At = Annotated[str | None, Query(min_length=1, max_length=64, pattern=TIME_PATTERN,
                                     description=f"request time, {TIME_DESCRIPTION}; default: the "
                                     "bundle's data cutoff plus the time since it was loaded (the user's time "
                                     "since their last interaction is then left unknown)")]
    RecommendBody = Annotated[recommend_request_model(settings.max_k, settings.max_exclude, settings.max_id_length),
                              Body()]

    @router.get("/recommend", response_model=RecommendResponse, responses=_errors(422, 503))
    async def recommend(request: Request, user: UserId, k: K = 10, exclude: Exclude = None, at: At = None) -> Response:
        """Top-k items for a user; unknown users get popular items, marked ``fallback: "popular"``.

        The bundle's context columns (``/version``: ``context_columns``, e.g. Instacart's
        ``order_dow``) are further optional numeric query parameters."""
        excluded = split_ids(exclude)
        live = state.current()
        context = query_context(request.query_params, live.model.context_columns)
        when = parse_time("query.at", at, live.model.real_time)
        ask = live.model.ask(live.ids.user(user), k, live.ids.items(excluded), at=when, context=context,
                             since=live.overlay.events(user))
        return await answer(RecommendCall(live, user, ask))

    @router.post("/recommend", response_model=RecommendResponse, responses=_errors(409, 422, 503))
    async def recommend_with_history(body: RecommendBody) -> Response:
        """Top-k for a request whose history the caller sends: an anonymous session, a client-side
        cart, or an offline evaluation reproduced over HTTP."""
        live = state.current()
        model = live.model
        context = body_context(body.context, model.context_columns)
        when = parse_time("body.at", body.at, model.real_time)
        history = None
        if body.history is not None:
            history = [(live.ids.item(event.item),
                        parse_time(f"body.history[{i}].timestamp", event.timestamp, model.real_time))
                       for i, event in enumerate(body.history)]
            history = [(item, stamp) for item, stamp in history if item is not None]
        user = live.ids.user(body.user) if body.user is not None else None
        since = live.overlay.events(body.user) if body.user is not None and history is None else ()
        ask = model.ask(user, body.k, live.ids.items(body.exclude), at=when, context=context, history=history,
                        since=since)
        return await answer(RecommendCall(live, body.user, ask))

    async def answer(call: ModelCall) -> Response:
        return json_response(await services.batcher.submit(call))

    @router.get("/similar", response_model=SimilarResponse, responses=_errors(404, 422, 503))
    async def similar(item: ItemId, k: K = 10) -> Response:
        """Items closest to ``item`` in the model's item space; 404 when the bundle does not know it."""
        live = state.current()
        key = live.ids.item(item)
        if key is None:
            raise UnknownItemError(item)
        index = int(live.model.item_index([key])[0])
        if index < 0:
            raise UnknownItemError(item)
        return await answer(SimilarCall(live, item, index, k))

    @router.get("/search", response_model=SearchResponse, responses=_errors(404, 422, 503))
    async def search(request: Request, q: SearchText, user: SearchUserId = None, k: K = 10,
                     exclude: SearchExclude = None) -> Response:
        """Catalogue items matching ``q`` by its words and its meaning; with ``user``, the matches are
        ordered by that user's taste (``personalised``; real-time events included). Any text answers
        200, possibly with no items; 404 when the served bundle has no search index."""
        refuse_unknown_parameters(request.query_params, SEARCH_QUERY)
        live = state.current()
        if not live.model.has_search:  # refused here, not in the batch: the answer needs no model pass
            raise NoSearchIndex(live.version)
        lookup = None if user is None else live.ids.user(user)
        since = () if user is None else live.overlay.events(user)
        ask = live.model.search_ask(q, lookup, k, live.ids.items(split_ids(exclude)), since=since)
        return await answer(SearchCall(live, q, user, ask))

    ExplainItems = Annotated[str, Query(
        min_length=1, max_length=min(MAX_EXPLAIN_ITEMS * (settings.max_id_length + 1), MAX_QUERY_EXCLUDE_CHARS),
        pattern=ID_PATTERN, description=f"comma-separated item ids to explain (at most {MAX_EXPLAIN_ITEMS})")]
    Reasons = Annotated[int, Query(ge=1, le=MAX_EXPLAIN_REASONS, description="history items per explained item")]

    @router.get("/explain", response_model=ExplainResponse, responses=_errors(422, 503))
    async def explain(request: Request, user: UserId, items: ExplainItems, n: Reasons = 3) -> Response:
        """Why items may suit ``user``: for each, the items of the user's history (stored plus
        real-time events, the newest 1000) closest to it in the model's item space, best first.
        An item the bundle does not know, or a user without history, gets an empty ``because``."""
        refuse_unknown_parameters(request.query_params, EXPLAIN_QUERY)
        asked = explained_ids(items)
        live = state.current()
        # Inline, not through the batcher: no model pass, a few small matrix products (the
        # history is capped so that a huge one cannot hold the event loop).
        answers = live.model.explain(live.ids.user(user), [live.ids.item(item) for item in asked], n,
                                     since=live.overlay.events(user))
        body = ExplainResponse(user=user, model_version=live.version, items=[
            ItemExplanation(item_id=item, because=item_scores(answer.because))
            for item, answer in zip(asked, answers, strict=True)])
        return json_response(body.model_dump_json().encode())

    Prefix = Annotated[str, Query(max_length=settings.max_id_length, pattern=PREFIX_PATTERN,
                                  description="only users whose id starts with this (empty: every user)")]
    Limit = Annotated[int, Query(ge=1, le=MAX_USERS_LIMIT, description="most users to return")]

    # Plain def (thread pool): the first call per bundle sorts every user id as text.
    @router.get("/users", response_model=UsersResponse, responses=_errors(422, 503))
    def users(request: Request, prefix: Prefix = "", limit: Limit = 20) -> Response:
        """The served bundle's users whose id starts with ``prefix``, in the bundle's order, with the
        length of their stored history; ``total`` counts every match."""
        refuse_unknown_parameters(request.query_params, USERS_QUERY)
        directory = state.current().model.user_directory
        rows, total = directory.matching(prefix, limit)
        counts = directory.history_lengths[rows].tolist()
        body = UsersResponse(total=total, users=[UserEntry(user_id=user, history=count)
                                                 for user, count in zip(directory.ids(rows), counts, strict=True)])
        return json_response(body.model_dump_json().encode())

    png = {"content": {PNG: {"schema": {"type": "string", "format": "binary"}}},
           "description": "the report: JSON for *.json, a PNG image for *.png"}

    # Plain def (thread pool): reads a file.
    @router.get("/reports/{name}", response_model=dict[str, Any], responses={200: png, **_errors(404, 422)})
    def report(name: ReportName) -> Response:
        """A report about the served models: ``card.json`` / ``card.png`` (compression's report card:
        quality, size and speed of the teacher and compressed bundles), ``search.png`` (its search
        section), ``loadtest.json`` / ``loadtest.png`` (the load test's summary). JSON is strict (NaN
        becomes null); 404 names the command that writes a missing report."""
        body, media_type = read_report(name, settings)
        return Response(body, media_type=media_type)

    @router.post("/events", status_code=202, response_model=EventsAccepted, responses=_errors(413, 422, 503))
    def post_events(events: Events) -> Response:
        """Store one event or a batch; answered only once the batch is durable (committed and on
        disk, SQLite or PostgreSQL) and in this worker's real-time history (every other worker reads
        it within ``overlay_poll_s``). Items the served bundle does not know are stored for the next
        retrain, listed in ``unknown_items``, and not recommended until then. Events sent with an
        ``event_id`` are stored once: a batch that timed out or got a 5xx can be re-sent as it was
        (``accepted`` counts what this request stored, ``duplicates`` what was already there)."""
        store, feeder = services.events, services.feeder
        if store is None or feeder is None:
            raise NotReady("the event store is not open yet: wait until GET /readyz answers 200")
        batch: list[EventIn] = events if isinstance(events, list) else [events]
        accepted = store.append([Event(e.user, e.item, e.event, e.timestamp, event_id=e.event_id) for e in batch])
        feeder.poll()
        items = list(dict.fromkeys(str(e.item) for e in batch))
        unknown = [item for item, known in zip(items, state.current().model.item_index(items) >= 0, strict=True)
                   if not known]
        body = EventsAccepted(accepted=accepted, duplicates=len(batch) - accepted, unknown_items=unknown)
        return json_response(body.model_dump_json().encode(), 202)

    @router.get("/healthz", response_model=HealthResponse)
    async def healthz() -> Response:
        """The process is up (it may still be loading a model)."""
        return json_response(_HEALTHY)

    @router.get("/readyz", response_model=ReadyResponse, responses=_errors(503))
    async def readyz() -> Response:
        """200 once a bundle is loaded and its smoke query passed; 503 before, and (with staggered
        reloads) while this replica loads a new bundle."""
        live = state.current()
        if services.events is None:
            raise NotReady("the event store is not open yet")
        if state.draining is not None:  # staggered reload: out of the load balancer's rotation meanwhile
            raise NotReady(f"loading bundle {state.draining}; {live.version} still answers requests sent here")
        return json_response(ReadyResponse(model_version=live.version).model_dump_json().encode())

    @router.get("/version", response_model=VersionResponse, responses=_errors(503))
    async def version() -> Response:
        """The served bundle's manifest summary."""
        return json_response(state.current().version_json)

    @router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition of this worker's metrics."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    require_admin = admin_guard(settings)

    @router.post("/admin/reload", response_model=ReloadResponse, dependencies=[Depends(require_admin)],
                 responses=_errors(401, 403, 404, 409, 422))
    def reload(request: Annotated[ReloadRequest | None, Body()] = None) -> ReloadResponse:
        """Load, verify and smoke-test a bundle, then swap it in; a refused bundle leaves the old one serving."""
        outcome = state.reload(request.path if request else None)
        return ReloadResponse(previous_version=outcome.previous_version, version=outcome.version,
                              changed=outcome.changed)

    return router


def admin_guard(settings: Settings) -> Any:
    """A dependency accepting ``Authorization: Bearer <token>`` or ``X-Admin-Token: <token>``."""
    bearer = HTTPBearer(auto_error=False, scheme_name="AdminBearer")
    header = APIKeyHeader(name="X-Admin-Token", auto_error=False, scheme_name="AdminToken")

    def require_admin(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
                      token: Annotated[str | None, Depends(header)]) -> None:
        if settings.admin_token is None:
            raise AdminDisabled("admin token not configured: set RECSYS_ADMIN_TOKEN to enable /admin routes")
        given = credentials.credentials if credentials is not None else token
        challenge = {"WWW-Authenticate": "Bearer"}
        if not given:
            raise Unauthorized("send the admin token as `Authorization: Bearer <token>` or `X-Admin-Token: <token>`",
                               challenge)
        if not hmac.compare_digest(given.encode(), settings.admin_token.get_secret_value().encode()):
            raise Unauthorized("the admin token is wrong", challenge)

    return require_admin
