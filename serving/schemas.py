"""The HTTP API's bodies: their own classes, never internal objects. Item ids are strings on the wire."""

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictFloat,
    StringConstraints,
    Tag,
    create_model,
)

# At least one visible character and no control characters: a NUL would be cut off by SQLite's
# length() (the events table's CHECK), and a blank id would poison training data.
# Spelled out, not \\s: OpenAPI patterns are ECMA-262, whose \\s differs from Python's and Rust's
# (U+0085, U+FEFF), so schema clients and the server would disagree on what is whitespace.
_NOT_CONTROL = r"[^\x00-\x1f\x7f-\x9f]"  # C0 and C1 controls, DEL
_VISIBLE = r"[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"
ID_PATTERN = rf"^{_NOT_CONTROL}*{_VISIBLE}{_NOT_CONTROL}*$"
PREFIX_PATTERN = rf"^(?:{_NOT_CONTROL}*{_VISIBLE}{_NOT_CONTROL}*)?$"  # an id's start: ID_PATTERN, or empty
DEFAULT_MAX_ID_LENGTH = 256
MAX_EVENT_TYPE_LENGTH = 64
# 2100-01-01: a larger value is almost always milliseconds sent where seconds are expected.
MAX_TIMESTAMP = 4_102_444_800
MAX_PATH_LENGTH = 4096


def external_id(max_length: int = DEFAULT_MAX_ID_LENGTH) -> Any:
    """The string type of a user or item id in requests (one definition for query and body)."""
    return Annotated[str, StringConstraints(min_length=1, max_length=max_length, pattern=ID_PATTERN)]


class ItemScore(BaseModel):
    item_id: str
    score: float
    title: str | None = None


class RecommendResponse(BaseModel):
    user: str | None = Field(description="the request's user; null for an anonymous POST /recommend")
    items: list[ItemScore]
    model_version: str
    fallback: Literal["popular"] | None = Field(
        None, description="set when the user is unknown (or has no history) and popular items were served"
    )


MAX_HISTORY = 1000
# A time sent as text: a number or an ISO-8601 time, so at least one digit (JSON Schema patterns search).
TIME_PATTERN = r"[0-9]"
TimeText = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=TIME_PATTERN)]
TIME_DESCRIPTION = ("in the log's own time unit: unix seconds or ISO-8601 for a log in real time, the raw "
                    "number for a log with pseudo-time")


class HistoryEventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item: external_id()
    timestamp: StrictFloat | TimeText | None = Field(None, description=f"when it happened, {TIME_DESCRIPTION}")


class RecommendRequest(BaseModel):
    """``POST /recommend``: a request whose history the caller supplies (replacing the stored one)."""

    model_config = ConfigDict(extra="forbid")

    user: external_id() | None = Field(None, description="known user (their id embedding is used); omit for a session")
    history: list[HistoryEventIn] | None = Field(
        None, max_length=MAX_HISTORY,
        description="the user's interactions, oldest first; replaces the stored history (omit to keep it)")
    at: StrictFloat | TimeText | None = Field(None, description=f"request time, {TIME_DESCRIPTION}; default: now")
    k: int = Field(10, ge=1)
    exclude: list[external_id()] = Field(default_factory=list, description="item ids never to return")
    context: dict[str, float] = Field(default_factory=dict, description="the bundle's context columns (see /version)")


def recommend_request_model(max_k: int, max_exclude: int, max_id_length: int) -> type[RecommendRequest]:
    """``RecommendRequest`` with this deployment's limits (``Settings``)."""
    item = external_id(max_id_length)
    return create_model(
        "RecommendRequest", __base__=RecommendRequest,
        user=(item | None, Field(None, description="known user (their id embedding is used); omit for a session")),
        k=(int, Field(10, ge=1, le=max_k, description="how many items to return")),
        exclude=(list[item], Field(default_factory=list, max_length=max_exclude,
                                   description="item ids never to return")))


class SimilarResponse(BaseModel):
    item: str
    items: list[ItemScore]
    model_version: str


class SearchResponse(BaseModel):
    query: str = Field(description="the query as sent")
    user: str | None = Field(description="the request's user; null when none was sent")
    items: list[ItemScore] = Field(description="best match first; fewer than k (or none) when few items match")
    model_version: str
    personalised: bool = Field(description="the user's history re-ordered the matches (a user with history was "
                                           "sent); false for anonymous queries and users the bundle knows nothing of")


class ItemExplanation(BaseModel):
    item_id: str = Field(description="an item asked about")
    because: list[ItemScore] = Field(description="the user's history items closest to it in the item space, "
                                     "best first (score: cosine similarity); empty for an item the bundle does "
                                     "not know or a user without history")


class ExplainResponse(BaseModel):
    user: str
    model_version: str
    items: list[ItemExplanation] = Field(description="in the order asked, each item once")


class UserEntry(BaseModel):
    user_id: str
    history: int = Field(description="how many items the bundle's stored history of the user holds")


class UsersResponse(BaseModel):
    users: list[UserEntry] = Field(description="in the bundle's order, at most `limit`")
    total: int = Field(description="how many of the bundle's users match the prefix")


def _integral(value: Any) -> Any:
    """JSON Schema counts 574713.0 as an integer, so the event schema accepts it as 574713; strict
    int validation still refuses booleans, strings and fractional or non-finite numbers."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


EVENT_ID_DESCRIPTION = (
    "the client's id for this event, unique among all its events (e.g. a UUID): an event whose event_id is "
    "already stored is not stored again (the first one sent wins) and counts in `duplicates`, so a request "
    "that timed out or got a 5xx can be re-sent as it was; omitted: stored every time it is sent")


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: external_id()
    item: external_id()
    event: Annotated[str, StringConstraints(min_length=1, max_length=MAX_EVENT_TYPE_LENGTH, pattern=ID_PATTERN)] = (
        "interaction"
    )
    timestamp: Annotated[int | None, BeforeValidator(_integral)] = Field(
        None, strict=True, ge=0, le=MAX_TIMESTAMP,
        description="unix seconds (not milliseconds); omitted means when the server stored it",
    )
    event_id: external_id() | None = Field(None, description=EVENT_ID_DESCRIPTION)


def event_in_model(max_id_length: int) -> type[EventIn]:
    """``EventIn`` with this deployment's id length limit (``Settings.max_id_length``)."""
    if max_id_length == DEFAULT_MAX_ID_LENGTH:
        return EventIn
    return create_model("EventIn", __base__=EventIn,
                        user=(external_id(max_id_length), ...), item=(external_id(max_id_length), ...),
                        event_id=(external_id(max_id_length) | None, Field(None, description=EVENT_ID_DESCRIPTION)))


def events_body(event_model: type[EventIn], max_events: int) -> Any:
    """One event object or a non-empty list of at most ``max_events``.

    The discriminator picks the branch from the JSON type, so an error names only the fields of
    the shape that was sent (not "... or it should have been a list").
    """
    batch = Annotated[list[event_model], Field(min_length=1, max_length=max_events)]
    return Annotated[
        Annotated[event_model, Tag("event")] | Annotated[batch, Tag("events")],
        Discriminator(lambda value: "events" if isinstance(value, list) else "event"),
    ]


class EventsAccepted(BaseModel):
    accepted: int = Field(description="events of the request stored by it (all of them when none has an event_id)")
    duplicates: int = Field(description=(
        "events of the request not stored again because their event_id already was (by an earlier request, "
        "e.g. the one a retry repeats, or earlier in this batch); accepted + duplicates = events sent, so all "
        "of the request is durable either way"))
    unknown_items: list[str] = Field(default_factory=list, description=(
        "items of the batch the served bundle does not know: stored for the next retrain, not recommended "
        "until a bundle knows them"))


class VersionResponse(BaseModel):
    bundle_version: str
    kind: str
    created_at: str
    data_fingerprint: str
    format_version: int
    metrics: dict[str, Any]
    data: dict[str, Any] = Field(default_factory=dict, description="cutoff (time of the last interaction the "
                                 "bundle knows) and what was held out of it")
    context_columns: list[str] = Field(default_factory=list, description="context parameters /recommend takes")


class HealthResponse(BaseModel):
    status: Literal["alive"] = "alive"


class ReadyResponse(BaseModel):
    status: Literal["ready"] = "ready"
    model_version: str


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Annotated[str, StringConstraints(min_length=1, max_length=MAX_PATH_LENGTH, pattern=ID_PATTERN)] | None = (
        Field(None, description="a bundle directory or bundles root; omitted means the configured bundle")
    )


class ReloadResponse(BaseModel):
    previous_version: str | None
    version: str
    changed: bool


class ErrorResponse(BaseModel):
    error: str = Field(description="a stable machine-readable code, e.g. unknown_item")
    detail: str = Field(description="what went wrong and, where possible, how to fix it")
