"""The live bundle and its hot swap.

A request reads ``ModelState.current()`` once and uses that ``LiveModel`` to the end, so a swap in
the middle of a request is harmless: the old model stays alive until its last request drops it.
A reload loads, verifies (checksums) and smoke-tests the new bundle *before* the swap, which only
replaces one reference under a lock; a bundle that fails any check is refused and the old one
keeps serving. While a reload runs, two models are in memory.

Each live bundle carries its real-time history overlay (`serving.overlay`), replayed from the
event store (the events after the bundle's data cutoff) before the swap.

Replicas sharing one bundles root (``staggered_reload``) reload one at a time: each takes a lock
file in the root (`ReloadLease`) before loading, answers /readyz 503 while it loads (so the load
balancer sends its traffic to the others; what still arrives is answered by the old bundle), and
keeps the lease until the balancer has had time to see it ready again. Capacity never drops below
N - 1 replicas, and a new ``current`` reaches every replica one load after another.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import gc
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from recsys.bundle.load import load_serving_model
from recsys.bundle.manifest import BundleError
from recsys.bundle.publish import resolve_bundle
from recsys.data.events import EventLog
from recsys.pipeline.served import ServingModel
from serving.errors import BundlePathInvalid, BundleRefused, NotReady
from serving.ids import RequestIds
from serving.metrics import ServingMetrics
from serving.overlay import HistoryOverlay
from serving.schemas import VersionResponse
from serving.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveModel:
    """A loaded, smoke-tested bundle plus what requests need from it, computed once at load."""

    model: ServingModel
    ids: RequestIds
    version_json: bytes
    overlay: HistoryOverlay

    @property
    def version(self) -> str:
        return self.model.version

    @property
    def bundle_dir(self) -> Path:
        return self.model.bundle_dir


@dataclass(frozen=True)
class ReloadOutcome:
    previous_version: str | None
    version: str
    changed: bool


def version_json(model: ServingModel) -> bytes:
    manifest = model.manifest
    return VersionResponse(bundle_version=manifest.bundle_version, kind=manifest.kind,
                           created_at=manifest.created_at, data_fingerprint=manifest.data_fingerprint,
                           format_version=manifest.format_version, metrics=manifest.metrics,
                           data=model.runtime.get("data", {}),
                           context_columns=list(model.context_columns)).model_dump_json().encode()


def release_memory() -> None:
    """Collect the replaced bundle now (its arrays sit in reference cycles through the pipeline's
    caches) and hand freed heap pages back to the OS (glibc keeps them otherwise: RSS would grow
    with every reload although nothing leaks)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: its allocator decides
        ctypes.CDLL("libc.so.6").malloc_trim(0)


LEASE_NAME = ".reload.lock"


class ReloadLease:
    """An exclusive lock on ``ROOT/.reload.lock`` held by the one replica of a bundles root that is
    reloading. ``flock`` is released by the kernel when its holder dies, so a replica killed mid-load
    never blocks the others; on shared storage it needs a filesystem with working ``flock`` (local
    disks, NFSv4). A root this process cannot write is served without a lease (logged once)."""

    def __init__(self, root: Path):
        self.path = root / LEASE_NAME
        self._warned = False

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        try:
            handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if not self._warned:
                log.warning("reload lease %s cannot be opened (%s): replicas of this root may reload together",
                            self.path, exc.strerror or exc)
                self._warned = True
            yield
            return
        try:
            started = time.monotonic()
            fcntl.flock(handle, fcntl.LOCK_EX)  # waits while another replica reloads
            waited = time.monotonic() - started
            if waited > 0.05:
                log.info("reload lease %s taken after waiting %.1f s for another replica", self.path, waited)
            yield
        finally:
            os.close(handle)  # closing releases the flock


class ModelState:
    def __init__(self, settings: Settings, metrics: ServingMetrics | None = None):
        self.settings = settings
        self.metrics = metrics or ServingMetrics()
        self._live: LiveModel | None = None
        self.events: EventLog | None = None  # the lifespan opens it before the first load
        self._swap_lock = threading.Lock()
        # Serialises reloads (admin route, watcher) so two never load at once; requests never take it.
        self._reload_lock = threading.Lock()
        # The version being loaded while this replica is out of rotation (staggered reloads), else None.
        self.draining: str | None = None
        root = settings.bundle
        self._lease = ReloadLease(root) if settings.staggered_reload and (root / "versions").is_dir() else None

    @property
    def live(self) -> LiveModel | None:
        return self._live

    def current(self) -> LiveModel:
        live = self._live
        if live is None:
            raise NotReady("no model is loaded yet: wait until GET /readyz answers 200")
        return live

    def load_initial(self) -> LiveModel:
        """Load the configured bundle; any problem propagates, so a server never starts without a model."""
        with self._reload_lock:
            live = self._open(resolve_bundle(self.settings.bundle))
            self._swap(live)
        return live

    def reload(self, path: str | Path | None = None) -> ReloadOutcome:
        """Swap to the bundle at ``path`` (default: the configured one, e.g. a root whose ``current`` moved)."""
        with self._reload_lock:
            previous = self._live
            old_version = previous.version if previous else None
            target = self._resolve(path)
            if previous is not None and target == previous.bundle_dir:
                self.metrics.observe_reload("unchanged")
                log.info("reload: %s is already being served", old_version)
                return ReloadOutcome(old_version, old_version, changed=False)
            with self._out_of_rotation(target):
                try:
                    live = self._open(target)
                except Exception as exc:
                    self.metrics.observe_reload("refused")
                    self._log_refusal(target, exc, old_version)
                    raise BundleRefused(f"bundle {target} was refused, still serving {old_version}: {exc}") from exc
                self._swap(live)
                previous = None  # the old bundle's last reference here; requests in flight may hold it a moment
                release_memory()
        self.metrics.observe_reload("success")
        log.info("hot-swapped bundle %s -> %s", old_version, live.version)
        return ReloadOutcome(old_version, live.version, changed=True)

    @contextlib.contextmanager
    def _out_of_rotation(self, target: Path) -> Iterator[None]:
        """With staggered reloads: the root's lease, /readyz 503 while loading, then the lease kept
        for ``reload_settle_s`` after this replica is ready again, so the load balancer has seen it
        back before the next replica leaves. Without: nothing (a lone server keeps answering ready)."""
        if self._lease is None:
            yield
            return
        with self._lease.held():
            self.draining = target.name
            try:
                yield
            finally:
                self.draining = None
                time.sleep(self.settings.reload_settle_s)

    def _resolve(self, path: str | Path | None) -> Path:
        given = self.settings.bundle if path is None else Path(path)
        try:
            return resolve_bundle(given)
        except (BundleError, OSError, ValueError) as exc:
            self.metrics.observe_reload("refused")
            log.error("reload refused: %s", exc)
            raise BundlePathInvalid(str(exc)) from exc

    @staticmethod
    def _log_refusal(target: Path, exc: Exception, old_version: str | None) -> None:
        if isinstance(exc, BundleError):
            log.error("refused bundle %s (%s); still serving %s", target, exc, old_version)
        else:  # not a known bundle problem: keep the traceback for whoever debugs it
            log.exception("refused bundle %s (smoke test or load failed); still serving %s", target, old_version)

    def _open(self, bundle_dir: Path) -> LiveModel:
        model = load_serving_model(bundle_dir, verify=True, threads=self.settings.threads,
                                   precompute_users=self.settings.precompute_users)
        model.smoke_test()
        overlay = HistoryOverlay((model.runtime.get("data") or {}).get("cutoff"), self.settings.overlay_max_users,
                                 self.settings.overlay_max_events)
        if self.events is not None:
            replayed = overlay.catch_up(self.events)
            log.info("real-time history: %d events of %d users after the data cutoff %s (of %d stored)",
                     overlay.n_events, overlay.n_users, overlay.cutoff, replayed)
        return LiveModel(model, RequestIds(model.content.users, model.content.items), version_json(model), overlay)

    def _swap(self, live: LiveModel) -> None:
        with self._swap_lock:
            self._live = live
        self.metrics.set_model(live.model.manifest)
        self.metrics.observe_overlay(live.overlay)


class CurrentWatcher:
    """Polls the bundles root's ``current`` pointer and reloads when it points somewhere new.

    A target that was refused is not retried until ``current`` moves again, so a bad publish
    produces one error, not one per poll.
    """

    def __init__(self, state: ModelState, interval_s: float):
        self.state = state
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bundle-watcher", daemon=True)
        self._refused: Path | None = None
        self._last_problem: str | None = None

    def start(self) -> None:
        log.info("watching %s for a new `current` bundle every %.1f s", self.state.settings.bundle, self.interval_s)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check_once()
            except Exception:  # a bug here must not silently end hot reloads
                log.exception("watcher: unexpected error; will check again in %.1f s", self.interval_s)

    def check_once(self) -> bool:
        """Reload if ``current`` moved; True when a new bundle is now served."""
        try:
            target = resolve_bundle(self.state.settings.bundle)
        except (BundleError, OSError) as exc:
            if str(exc) != self._last_problem:
                log.warning("watcher: %s; still serving the loaded bundle", exc)
                self._last_problem = str(exc)
            return False
        self._last_problem = None
        live = self.state.live
        if (live is not None and target == live.bundle_dir) or target == self._refused:
            return False
        try:
            self.state.reload(target)
        except (BundleRefused, BundlePathInvalid):
            self._refused = target
            return False
        self._refused = None
        return True
