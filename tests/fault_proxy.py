"""A fault-injecting reverse proxy for the GCS emulator (test-only).

Point a client's ``STORAGE_EMULATOR_HOST`` at ``proxy.endpoint``: every
request is forwarded to the emulator, except a chosen fraction (seeded RNG),
which fails in one of these ways:

  ``503``           answered "503 Service Unavailable" (not forwarded)
  ``429``           answered "429 Too Many Requests" (not forwarded)
  ``reset``         connection reset (RST: SO_LINGER 0) without an answer,
                    before forwarding: the emulator never sees the request
  ``reset_after``   forwarded, then the connection is reset instead of
                    relaying the answer: the emulator *did* act on it (the
                    client cannot know; only idempotent retries survive).
                    Not applied to uploads (``reset`` instead):
                    fake-gcs-server forgets a resumable-upload session once
                    it is complete, so the client's retry of a final PUT
                    whose answer was lost gets 404, where real GCS answers
                    200 with the object -- an emulator gap, not a client one.

Requests that are not failed pass through intact: the body is read whole
(Content-Length or chunked transfer encoding, de-chunked) and forwarded with
its headers (hop-by-hop headers dropped, Host set to the emulator), so
multipart and resumable uploads (``Content-Range`` chunks, 308 answers) and
batch requests (``multipart/mixed``) work. The emulator's own URL in answers
is rewritten to the proxy's -- in ``Location`` (resumable upload sessions)
and in JSON bodies (``mediaLink``/``selfLink``, which google-cloud-storage
downloads from after ``blob.reload()``) -- so that no follow-up request
bypasses the proxy.

``always_fail`` rules fail every matching request, whatever the rate: e.g.
``[("GET", "photos/a.JPEG")]`` (method and a substring of the unquoted path)
makes one object unreadable for good.

``fail_every={"batch": 2}`` fails the 2nd, 4th, ... request of a kind
(json / upload / download / batch), whatever the rate: coverage of a kind
with few requests that a random 20% could miss (the next request, e.g. the
client's retry, passes unless it is taken by a concurrent one).

Counts (``proxy.stats()``): requests, forwarded, faults by mode and by
request kind; ``handler_errors`` (bugs in the proxy: should stay 0) and
``client_disconnects`` (clients dropping idle keep-alive connections).
All counters are under one lock; the RNG draws happen under it too, so one
seed gives one sequence of decisions (which request gets which decision
depends on the order in which concurrent requests arrive).

This module deliberately does not import pytest; it only ever listens on
127.0.0.1 and only forwards to the upstream it was given.
"""
from __future__ import annotations

import collections
import http.client
import json
import random
import socket
import struct
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Iterable, Optional, Sequence, Tuple

MODES = ("503", "429", "reset", "reset_after")
DEFAULT_MODES = ("503", "429", "reset")

_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate",
    "proxy-authorization", "te", "trailer", "trailers", "transfer-encoding",
    "upgrade", "expect", "content-length", "host"})
_STATUS_TEXT = {503: "Service Unavailable", 429: "Too Many Requests"}


def request_kind(method: str, path: str) -> str:
    """json / upload / download / batch: what a GCS request is for."""
    if path.startswith("/upload/"):
        return "upload"
    if path.startswith("/batch/"):
        return "batch"
    if path.startswith("/download/") or "alt=media" in path:
        return "download"
    return "json"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: "FaultProxy"

    def handle_error(self, request, client_address):
        # A client that hangs up (or a connection we reset on purpose) is
        # not an error worth a traceback on stderr.
        error = sys.exc_info()[0]
        if error is not None and issubclass(error, (ConnectionResetError,
                                                    BrokenPipeError)):
            # A client dropping an idle keep-alive connection.
            self.proxy._count("client_disconnects")  # pylint: disable=protected-access
        else:  # a bug in the proxy
            self.proxy._count(  # pylint: disable=protected-access
                "handler_errors",
                f"handler_errors.{getattr(error, '__name__', error)}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        pass  # quiet

    # Every method GCS clients use.
    def do_GET(self):
        self._proxy()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

    def finish(self):
        try:
            super().finish()
        except (OSError, ValueError):
            pass  # the socket was reset on purpose
        upstream = getattr(self, "_upstream", None)
        if upstream is not None:
            upstream.close()

    # ------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n",
                                                            b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(65537)  # CRLF after the chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _proxy(self) -> None:
        proxy = self.server.proxy
        body = self._read_body()
        mode = proxy._decide(self.command, self.path)  # pylint: disable=protected-access
        if mode in ("503", "429"):
            self._answer_error(int(mode))
            return
        if mode == "reset":
            self._reset()
            return
        try:
            status, reason, headers, answer = self._forward(body)
        except (OSError, http.client.HTTPException) as exc:
            proxy._count("upstream_errors")  # pylint: disable=protected-access
            self._answer_error(502, f"proxy: upstream failed: {exc}")
            return
        if mode == "reset_after":
            self._reset()
            return
        self._relay(status, reason, headers, answer)

    def _forward(self, body: bytes):
        proxy = self.server.proxy
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in _HOP_BY_HOP}
        headers["Host"] = proxy.upstream_netloc
        for attempt in (1, 2):
            conn = getattr(self, "_upstream", None)
            if conn is None:
                conn = self._upstream = http.client.HTTPConnection(
                    proxy.upstream_host, proxy.upstream_port, timeout=120)
            try:
                send_body = body if (body or self.command in
                                     ("POST", "PUT", "PATCH")) else None
                conn.request(self.command, self.path, body=send_body,
                             headers=headers)
                response = conn.getresponse()
                answer = response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._upstream = None
                if attempt == 2:
                    raise
                continue  # a stale keep-alive connection: once more
            proxy._count("forwarded")  # pylint: disable=protected-access
            return response.status, response.reason, \
                response.getheaders(), answer
        raise AssertionError("unreachable")

    def _relay(self, status: int, reason: str,
               headers: Sequence[Tuple[str, str]], answer: bytes) -> None:
        proxy = self.server.proxy
        content_type = ""
        out_headers = []
        for name, value in headers:
            lower = name.lower()
            if lower in _HOP_BY_HOP:
                continue
            if lower == "location":
                value = proxy.rewrite(value)
            if lower == "content-type":
                content_type = value.lower()
            out_headers.append((name, value))
        if content_type.startswith("application/json"):
            answer = proxy.rewrite_bytes(answer)
        self.send_response_only(status, reason)
        for name, value in out_headers:
            self.send_header(name, value)
        if self.command == "HEAD":
            length = dict((k.lower(), v) for k, v in headers).get(
                "content-length")
            if length is not None:
                self.send_header("Content-Length", length)
        elif status >= 200 and status not in (204, 304):
            self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        if self.command != "HEAD" and answer:
            self.wfile.write(answer)
        self.wfile.flush()

    def _answer_error(self, status: int, message: str = "") -> None:
        message = message or f"injected fault ({status})"
        body = json.dumps({"error": {
            "code": status, "message": message,
            "errors": [{"message": message, "domain": "global",
                        "reason": "backendError" if status != 429
                        else "rateLimitExceeded"}]}}).encode()
        self.send_response_only(status, _STATUS_TEXT.get(status, "Error"))
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _reset(self) -> None:
        """Close with RST (SO_LINGER on, timeout 0), answering nothing."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass


class FaultProxy:
    """Threaded fault-injecting reverse proxy on 127.0.0.1 (see module doc).

    fault_rate: fraction of requests to fail (0..1), with modes picked
    uniformly from `modes`. `set_fault_rate` changes it while running.
    """

    def __init__(self, upstream: str, fault_rate: float = 0.0,
                 seed: int = 0, modes: Sequence[str] = DEFAULT_MODES,
                 always_fail: Iterable[Tuple[str, str]] = (),
                 always_fail_mode: str = "503",
                 fail_every: Optional[Dict[str, int]] = None) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.scheme != "http" or parsed.hostname not in (
                "127.0.0.1", "localhost", "::1"):
            raise ValueError(f"upstream must be a loopback http URL: "
                             f"{upstream}")
        unknown = set(modes) - set(MODES) | ({always_fail_mode} - set(MODES))
        if unknown:
            raise ValueError(f"unknown fault modes {sorted(unknown)}")
        self.upstream = f"http://{parsed.netloc}"
        self.upstream_host = parsed.hostname
        self.upstream_port = parsed.port or 80
        self.upstream_netloc = parsed.netloc
        self._rate = float(fault_rate)
        self._modes = tuple(modes)
        self._always_fail = [(m.upper(), s) for m, s in always_fail]
        self._always_fail_mode = always_fail_mode
        self._fail_every = dict(fail_every or {})
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._counts: Dict[str, int] = collections.Counter()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self.endpoint: Optional[str] = None

    # ------------------------------------------------------------ life
    def start(self) -> "FaultProxy":
        server = _Server(("127.0.0.1", 0), _Handler)
        server.proxy = self
        self._server = server
        self.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(target=server.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def env(self, emulator_env: Dict[str, str]) -> Dict[str, str]:
        """`emulator_env` (GcsEmulator.env()) with the proxy in its place."""
        return {**emulator_env, "STORAGE_EMULATOR_HOST": self.endpoint}

    # ---------------------------------------------------------- control
    def set_fault_rate(self, rate: float) -> None:
        with self._lock:
            self._rate = float(rate)

    def reset_counts(self) -> None:
        with self._lock:
            self._counts.clear()

    def stats(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._counts)

    @property
    def requests(self) -> int:
        return self.stats().get("requests", 0)

    @property
    def faults(self) -> int:
        return self.stats().get("faults", 0)

    # ------------------------------------------------------- internals
    def rewrite(self, text: str) -> str:
        return text.replace(self.upstream, self.endpoint)

    def rewrite_bytes(self, data: bytes) -> bytes:
        return data.replace(self.upstream.encode(), self.endpoint.encode())

    def _count(self, *names: str) -> None:
        with self._lock:
            for name in names:
                self._counts[name] += 1

    def _decide(self, method: str, path: str) -> Optional[str]:
        """The fault for this request, or None to forward it."""
        kind = request_kind(method, path)
        unquoted = urllib.parse.unquote(path)
        with self._lock:
            self._counts["requests"] += 1
            self._counts[f"requests.{kind}"] += 1
            mode = None
            ordinal = self._counts[f"requests.{kind}"] - 1
            every = self._fail_every.get(kind)
            if any(method == m and s in unquoted
                   for m, s in self._always_fail):
                mode = self._always_fail_mode
                self._counts["always_failed"] += 1
            elif every and ordinal % every == 1 % every:
                mode = self._modes[self._rng.randrange(len(self._modes))]
            elif self._rate and self._rng.random() < self._rate:
                mode = self._modes[self._rng.randrange(len(self._modes))]
            if mode == "reset_after" and kind == "upload":
                mode = "reset"
            if mode:
                self._counts["faults"] += 1
                self._counts[f"faults.{mode}"] += 1
                self._counts[f"faults.{kind}"] += 1
            return mode
