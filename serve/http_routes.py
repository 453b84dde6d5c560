"""Plain-HTTP side of the recognition server: the websocket upgrade checks (path, token,
connection limit), the browser page and static files, /health, /metrics and /stats.
Re-exported by `ekd_compress.serve.server`."""
from __future__ import annotations

import hmac
import logging
import mimetypes
import time
from collections import deque
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ekd_compress.contract.tokens import BLANK_ID, BPE_MARK, SPACE, UNK
from ekd_compress.serve.metrics import rss_mb
from ekd_compress.serve.protocol import _json

log = logging.getLogger("serve")

STATIC_DIR = Path(__file__).parent / "static"
# The files the page may ask for, listed once: request paths are looked up here and never reach
# the filesystem (a path longer than NAME_MAX used to raise OSError and answer 500).
STATIC_FILES = frozenset(p.name for p in STATIC_DIR.iterdir() if p.is_file()) if STATIC_DIR.is_dir() else frozenset()


class BadRequest(Exception):
    """A malformed HTTP request: answered 400 with this message, logged on one line."""


def single_header(request, name: str) -> str:
    """The value of header `name` ("" when absent). A header sent twice is ambiguous
    (which Authorization counts?): BadRequest, never websockets' MultipleValuesError."""
    values = request.headers.get_all(name)
    if len(values) > 1:
        raise BadRequest(f"the {name} header was sent {len(values)} times; send it once")
    return values[0] if values else ""


def _peer(connection) -> str:
    """The client's address for log lines ("?" when unknown)."""
    try:
        return str(connection.remote_address[0])
    except (AttributeError, IndexError, TypeError):
        return "?"


class HTTPRoutes:
    """HTTP request handling mixed into `RecognitionServer` (uses its rec, config, metrics,
    active, per_address and started attributes)."""

    _auth_failures: dict[str, deque]  # client address -> times of its recent wrong tokens

    def _authorized(self, request) -> bool:
        token = self.config.token
        if not token:
            return True
        given = ""
        auth = single_header(request, "Authorization")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        else:
            given = (parse_qs(urlsplit(request.path).query).get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), token.encode())

    def _origin_allowed(self, origin: str, host: str) -> bool:
        """A browser's upgrade (it sends Origin) is allowed from this server's own page (Origin's
        host:port equals the Host header) or an origin listed in config.allowed_origins ("*":
        any). Stops other web sites from using a visitor's browser to reach the server."""
        allowed = self.config.allowed_origins
        if "*" in allowed or origin.rstrip("/") in allowed:
            return True
        return bool(host) and urlsplit(origin).netloc.lower() == host.lower()

    def _check_token(self, connection, request):
        """None when the request may go on; else the response refusing it: 401 for a missing or
        wrong token, 429 while its address has had max_auth_failures failures within
        auth_window_s (guessing is slowed to that many tries per window per address)."""
        if not self.config.token:
            return None
        addr, now = _peer(connection), time.monotonic()
        window, limit = self.config.auth_window_s, self.config.max_auth_failures
        fails = self._auth_failures.setdefault(addr, deque())
        while fails and now - fails[0] > window:
            fails.popleft()
        if limit and len(fails) >= limit:
            self.metrics.rejected.labels("auth_throttled").inc()
            wait = max(1, int(window - (now - fails[0])) + 1)
            return self._respond(connection, HTTPStatus.TOO_MANY_REQUESTS,
                                 f"{len(fails)} wrong tokens from {addr} in {window:g} s; retry in {wait} s\n",
                                 "text/plain; charset=utf-8", {"Retry-After": str(wait)})
        if self._authorized(request):
            if not fails:
                del self._auth_failures[addr]
            return None
        fails.append(now)
        if len(self._auth_failures) > 10_000:  # many addresses: forget the ones with no recent failure
            for a in [a for a, f in self._auth_failures.items() if not f or now - f[-1] > window]:
                del self._auth_failures[a]
        self.metrics.rejected.labels("unauthorized").inc()
        log.info("401 for %s: missing or wrong token (%d in %g s)", addr, len(fails), window)
        return self._respond(connection, HTTPStatus.UNAUTHORIZED,
                             "missing or wrong token: send 'Authorization: Bearer TOKEN' or add ?token=TOKEN\n",
                             "text/plain; charset=utf-8", {"WWW-Authenticate": "Bearer"})

    def _respond(self, connection, status: HTTPStatus, body: str, content_type: str, extra: dict | None = None):
        resp = connection.respond(status, body)
        headers = {"Content-Type": content_type, "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
        for k, v in {**headers, **(extra or {})}.items():
            if k in resp.headers:
                del resp.headers[k]  # websockets' Headers is a multi-dict: assignment would append
            resp.headers[k] = v
        return resp

    def health(self, authorized: bool = True) -> dict[str, Any]:
        """/health: only {"status": "ok"} for a client without the token (when one is set);
        the details (model, load, memory) to the others. Never the bundle path or the PID."""
        if not authorized:
            return {"status": "ok"}
        rss, peak = rss_mb()
        b = self.rec.bundle
        return {"status": "ok", "model": b.name, "provider": self.rec.provider,
                "output": "phones" if b.tokens.kind == "phone" else "words",
                "int8": self.rec.use_int8, "sample_rate": b.sample_rate, "chunk_ms": round(b.chunk_seconds * 1000),
                "lookahead_ms": round(b.lookahead_seconds * 1000),
                **model_info(b),
                "streams": self.active, "max_connections": self.config.max_connections,
                "chunks_decoded": self.rec.chunks_decoded, "uptime_s": round(time.time() - self.started, 1),
                "rss_mb": round(rss, 1), "peak_rss_mb": round(peak, 1)}

    def _process_request(self, connection, request):
        try:
            return self._route(connection, request)
        except BadRequest as e:
            self.metrics.rejected.labels("bad_request").inc()
            log.info("400 for %s: %s", _peer(connection), e)
            return self._respond(connection, HTTPStatus.BAD_REQUEST, f"{e}\n", "text/plain; charset=utf-8")

    def _route(self, connection, request):
        url = urlsplit(request.path)
        path = url.path
        shown = path if len(path) <= 100 else path[:97] + "..."  # never echo a 5 KB path
        upgrade = "websocket" in single_header(request, "Upgrade").lower()
        if upgrade:
            if path not in ("/", "/ws"):
                self.metrics.rejected.labels("not_found").inc()
                return self._respond(connection, HTTPStatus.NOT_FOUND,
                                     f"no websocket endpoint at {shown}; connect to /ws (native) or / (Vosk)\n",
                                     "text/plain; charset=utf-8")
            origin = single_header(request, "Origin")
            if origin and not self._origin_allowed(origin, single_header(request, "Host")):
                self.metrics.rejected.labels("bad_origin").inc()
                log.info("403 for %s: websocket from origin %s", _peer(connection), origin[:100])
                return self._respond(connection, HTTPStatus.FORBIDDEN,
                                     f"websocket connections from the page at {origin[:100]} are not allowed; "
                                     "start the server with --allowed-origin ORIGIN to allow it\n",
                                     "text/plain; charset=utf-8")
            refused = self._check_token(connection, request)
            if refused is not None:
                return refused
            cap, addr = self.config.max_per_address, _peer(connection)
            if cap and self.per_address.get(addr, 0) >= cap:
                self.metrics.rejected.labels("per_address").inc()
                log.info("429 for %s: %d connections open from it (--max-per-address %d)", addr,
                         self.per_address.get(addr, 0), cap)
                return self._respond(
                    connection, HTTPStatus.TOO_MANY_REQUESTS,
                    f"{self.per_address.get(addr, 0)} connections already open from {addr} (max {cap}); close one "
                    "and retry, or start the server with a higher --max-per-address\n",
                    "text/plain; charset=utf-8", {"Retry-After": "5"})
            if self.active >= self.config.max_connections:
                self.metrics.rejected.labels("busy").inc()
                return self._respond(
                    connection, HTTPStatus.SERVICE_UNAVAILABLE,
                    f"server busy: {self.active} streams open (max {self.config.max_connections}); "
                    "retry in a few seconds, or start the server with a higher --max-connections\n",
                    "text/plain; charset=utf-8", {"Retry-After": "5"})
            return None
        if path in ("/", "/index.html"):
            return self._static(connection, "index.html")
        if path == "/health":
            return self._respond(connection, HTTPStatus.OK, _json(self.health(self._authorized(request))),
                                 "application/json")
        if path in ("/metrics", "/stats"):
            refused = self._check_token(connection, request)
            if refused is not None:
                return refused
            if path == "/metrics":
                return self._respond(connection, HTTPStatus.OK, self.metrics.exposition().decode(),
                                     "text/plain; version=0.0.4; charset=utf-8")
            try:
                since = int((parse_qs(url.query).get("since") or ["0"])[0])
            except ValueError:
                since = 0
            stats = self.metrics.stats(since)
            stats.update(streams=self.active, rss_mb=round(rss_mb()[0], 1))
            return self._respond(connection, HTTPStatus.OK, _json(stats), "application/json")
        name = path.lstrip("/")
        if name in STATIC_FILES:
            return self._static(connection, name)
        self.metrics.rejected.labels("not_found").inc()
        return self._respond(connection, HTTPStatus.NOT_FOUND, f"{shown} not found; try / (page), /health, /metrics\n",
                             "text/plain; charset=utf-8")

    def _static(self, connection, name: str):
        path = STATIC_DIR / name
        if not path.is_file():
            return self._respond(connection, HTTPStatus.NOT_FOUND, f"{name} is missing from {STATIC_DIR}\n",
                                 "text/plain; charset=utf-8")
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype += "; charset=utf-8"
        return self._respond(connection, HTTPStatus.OK, path.read_text(encoding="utf-8"), ctype)


def model_info(bundle) -> dict[str, Any]:
    """What the model knows, for /health and the page: its token set (blank and the word separator
    left out), their kind, the language when the bundle records one, and the dev WER it was exported with."""
    meta = bundle.meta
    symbols = [t for t in bundle.tokens.tokens[BLANK_ID + 1:] if t not in (SPACE, BPE_MARK, UNK)]
    wer = (meta.get("provenance") or {}).get("dev_wer")
    return {"vocabulary": symbols, "token_kind": meta.get("token_kind", "char"),
            "language": meta.get("language") or (meta.get("provenance") or {}).get("language"),
            "dev_wer": round(wer, 2) if isinstance(wer, (int, float)) else None}
