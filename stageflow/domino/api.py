"""Domino's REST API, as `make environments` and `make submit` call it: one client, authenticated the way
Domino asks for from where it runs. Standard library only: `make submit` runs with a workspace's Python.

Where the calls go, and with what (sources in docs/domino.md):
- Inside a Domino run (workspace, job) `DOMINO_API_PROXY` names a local proxy that adds the run's credentials
  itself; python-domino calls it "the preferred method of authentication" and keeps the path of each request
  while replacing its scheme and host. So inside, requests go to the proxy with no auth header, and
  `DOMINO_API_HOST` (there the internal service URL, e.g. http://nucleus-frontend.domino-platform:80) is not
  used at all.
- Outside, requests go to `DOMINO_API_HOST` with a personal access token (`DOMINO_ACCESS_TOKEN`, sent as
  `Authorization: Bearer`, Domino's current advice) or the legacy API key (`DOMINO_USER_API_KEY`, sent as
  `X-Domino-Api-Key`; Domino documents it as being phased out).
- Inside a run without the proxy and without either credential, a short-lived bearer token is fetched from
  the run's token endpoint before each request (it lives about five minutes; builds take longer).
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Mapping

from stageflow.runtime.contract import StageError

HOST_ENV, PROXY_ENV = "DOMINO_API_HOST", "DOMINO_API_PROXY"
KEY_ENV, TOKEN_ENV = "DOMINO_USER_API_KEY", "DOMINO_ACCESS_TOKEN"
TOKEN_URL = "http://localhost:8899/access-token"  # a run's token endpoint when it has no DOMINO_API_PROXY
CREDENTIALS = f"{HOST_ENV} with {TOKEN_ENV} (a personal access token) or {KEY_ENV}"


class DominoError(StageError):
    """A missing precondition or a refused request, as one line that says what to do."""

    exit_status = 1

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def squeeze(text: str, limit: int = 300) -> str:
    return " ".join(text.split())[:limit]


class Api:
    """JSON over HTTP to one base URL; `headers` is called per request (a token may expire meanwhile)."""

    def __init__(self, base: str, headers: Callable[[], dict[str, str]], via: str, direct: bool = False,
                 timeout: float = 30.0):
        self.base, self.headers, self.via, self.timeout = base.rstrip("/"), headers, via, timeout
        # The proxy is this machine's sidecar: an HTTP(S)_PROXY meant for outside traffic must not catch it.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}) if direct else
                                                  urllib.request.ProxyHandler())

    def call(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        url = self.base + path + ("?" + urllib.parse.urlencode(query, doseq=True) if query else "")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method, headers={
            "Accept": "application/json", **({"Content-Type": "application/json"} if data else {}),
            **self.headers()})
        try:
            with self.opener.open(request, timeout=self.timeout) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as err:
            raise DominoError(f"{method} {url}: HTTP {err.code} {squeeze(err.read().decode(errors='replace'))}",
                              err.code) from None
        except (OSError, urllib.error.URLError) as err:
            raise DominoError(f"{method} {url}: {squeeze(str(getattr(err, 'reason', err)))}") from None
        try:
            return json.loads(text) if text.strip() else None
        except ValueError:
            raise DominoError(f"{method} {url}: the answer is not JSON: {squeeze(text, 120)}") from None

    def get(self, path: str, **query: Any) -> Any:
        return self.call("GET", path, **query)

    def post(self, path: str, body: Any) -> Any:
        return self.call("POST", path, body)

    def pages(self, path: str, key: str, limit: int = 100, **query: Any) -> list:
        """Every item of a list that Domino's public API pages with offset and limit, to its end: the total the
        answer reports (`metadata.totalCount`, as its paginated envelopes carry it) when it reports one, else the
        first empty page. A page shorter than asked for is not the end: a server may cap the limit."""
        found: list = []
        while True:
            answer = self.get(path, **query, offset=len(found), limit=limit)
            page = items(answer, key)
            if page and found[-len(page):] == page:
                raise DominoError(f"GET {self.base}{path} answers the same page again at offset {len(found)}; "
                                  f"its list cannot be read to the end")
            found += page
            total = ((answer.get("metadata") or {}) if isinstance(answer, dict) else {}).get("totalCount")
            if not page or (isinstance(total, int) and len(found) >= total):
                return found


def items(answer: Any, *keys: str) -> list:
    """A list from an answer that is either the list itself or an object holding it under one of `keys`."""
    if isinstance(answer, list):
        return answer
    for key in keys:
        if isinstance(answer, dict) and isinstance(answer.get(key), list):
            return answer[key]
    raise DominoError(f"unexpected answer (no list under {' or '.join(keys)}): {squeeze(json.dumps(answer), 160)}")


def unwrap(answer: Any, key: str) -> dict:
    """Domino's public API wraps an object in an envelope (`{"environment": {...}, "metadata": {...}}`);
    older routes answer with the object itself. Accept both."""
    inner = answer.get(key) if isinstance(answer, dict) else None
    return inner if isinstance(inner, dict) else (answer if isinstance(answer, dict) else {})


def bare_url(url: str) -> str:
    """python-domino accepts a proxy as host:port and prepends http:// then."""
    return url if re.match(r"https?://", url) else f"http://{url}"


def run_token() -> dict[str, str]:
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(TOKEN_URL, timeout=10) as answer:
            token = answer.read().decode().strip()
    except OSError as err:
        raise DominoError(f"no API token from {TOKEN_URL} ({squeeze(str(err), 120)}): set {TOKEN_ENV}") from None
    return {"Authorization": "Bearer " + token.removeprefix("Bearer ").strip()}


class BadUrl(DominoError):
    """DOMINO_API_HOST or DOMINO_API_PROXY set to something that is not a URL: said, never taken for unset."""


def configured(env: Mapping[str, str] = os.environ) -> bool:
    """Whether `connect` has what it needs: the proxy, or a host and a way to authenticate there (asked of
    `connect` itself, which only builds the client, so the two cannot disagree). A variable set to what is not
    a URL is raised (BadUrl), not taken for "not configured"."""
    try:
        connect(env)
    except BadUrl:
        raise
    except DominoError:
        return False
    return True


def checked_url(name: str, url: str) -> str:
    """An http(s) URL with a host, or one line naming the variable that holds something else."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as err:
        raise BadUrl(f"{name}={url}: not a URL ({err}); expected http(s)://host[:port]") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadUrl(f"{name}={url}: not an http(s) URL with a host; expected http(s)://host[:port]")
    return url


def connect(env: Mapping[str, str] = os.environ) -> Api:
    """The client for where this runs: the run's proxy inside Domino, else the host with a token or key."""
    if env.get(PROXY_ENV):
        proxy = checked_url(PROXY_ENV, bare_url(env[PROXY_ENV]))
        return Api(proxy, dict, f"Domino's API proxy {proxy}", direct=True)
    host = env.get(HOST_ENV)
    if not host:
        raise DominoError(f"{HOST_ENV} is not set: set {CREDENTIALS} (inside Domino, {PROXY_ENV} is set for you)")
    checked_url(HOST_ENV, host)
    if env.get(TOKEN_ENV):
        token = env[TOKEN_ENV]
        return Api(host, lambda: {"Authorization": f"Bearer {token}"}, host)
    if env.get(KEY_ENV):
        key = env[KEY_ENV]
        return Api(host, lambda: {"X-Domino-Api-Key": key}, host)
    if env.get("DOMINO_RUN_ID"):
        return Api(host, run_token, host)
    raise DominoError(f"no credentials for {host}: set {TOKEN_ENV} (a personal access token) or {KEY_ENV}")
