"""The running server, over HTTP only: is it up, hot-reload it, which bundle does it serve."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5
RELOAD_TIMEOUT_S = 300  # loading, verifying and smoke-testing a bundle


class ReloadFailed(RuntimeError):
    """The server is up but did not end up serving the new bundle; the message says how to fix it."""


class ServerClient:
    def __init__(self, base_url: str, admin_token: str | None):
        self.base_url = base_url.rstrip("/")
        self.admin_token = admin_token
        # No proxies: the server is local, and an http_proxy variable must not reroute 127.0.0.1.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def is_up(self) -> bool:
        try:
            self._call("GET", "/healthz", timeout=PROBE_TIMEOUT_S)
        except urllib.error.HTTPError:
            return True  # something answers; /admin/reload will tell whether it is ours
        except (urllib.error.URLError, OSError):
            return False
        return True

    def reload(self, expected_versions: set[str]) -> dict[str, Any]:
        """``POST /admin/reload`` (re-resolve the server's bundles root); its answer names the version now served.

        That answer, not a later ``GET /version``: behind a load balancer the second request may reach
        another replica, which follows ``current`` on its own (`ops.replicas`) and may not have switched yet.
        """
        if not self.admin_token:
            raise ReloadFailed(f"a server is running at {self.base_url} but RECSYS_ADMIN_TOKEN is not set here: "
                               "export the server's token and run again (it skips straight to the reload), "
                               "or restart the server")
        headers = {"Authorization": f"Bearer {self.admin_token}", "Content-Type": "application/json"}
        try:
            outcome = self._call("POST", "/admin/reload", b"{}", headers, RELOAD_TIMEOUT_S)
            served = outcome["version"]
        except urllib.error.HTTPError as exc:
            raise ReloadFailed(f"{self.base_url} answered HTTP {exc.code}: {_detail(exc)}") from exc
        except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError) as exc:
            raise ReloadFailed(f"{self.base_url} did not complete the reload ({exc})") from exc
        if served not in expected_versions:
            raise ReloadFailed(
                f"{self.base_url} serves {served}, not the published {' or '.join(sorted(expected_versions))}: "
                "it was probably started with a bundle version directory or another root; restart it with "
                "--bundle pointing at the bundles root (e.g. make serve)")
        return outcome

    def _call(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
              timeout: float = PROBE_TIMEOUT_S) -> Any:
        request = urllib.request.Request(self.base_url + path, data=body, headers=headers or {}, method=method)
        with self._opener.open(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
        return f"{body.get('error')}: {body.get('detail')}"
    except (ValueError, AttributeError, OSError):
        return exc.reason or "no detail"
