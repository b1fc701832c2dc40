"""Who may connect: CurveZMQ key classes, reloaded on SIGHUP, and basic auth for /metrics.

Two classes of client key, each a directory of ``*.key`` public-key files:

- operator keys (``authorized_keys_dir``): requests, job events and deployment samples;
- monitor keys (``monitor_keys_dir``, optional): deployment samples only. A monitor key is
  refused at the handshake of the request and event sockets.

Each socket carries its own ZAP domain (``rpc``, ``events``, ``ingest``) so one callback
decides by domain and key class. A key file that does not parse is skipped with a log line;
a missing directory is an error at start and, on reload, keeps the keys already loaded.
"""

from __future__ import annotations

import base64
import hmac
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client.exposition import ThreadingWSGIServer
from zmq.auth import load_certificate
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("prunerd")

OPERATOR = "operator"
MONITOR = "monitor"
# ZAP domain of each socket -> the key classes it admits.
DOMAINS = {"rpc": (OPERATOR,), "events": (OPERATOR,), "ingest": (OPERATOR, MONITOR)}


def load_keys(directory: Path) -> dict[bytes, str]:
    """z85 public key -> file name, for every readable ``*.key`` in ``directory``."""
    if not directory.is_dir():
        raise FileNotFoundError(
            f"authorised-keys directory {str(directory)!r} does not exist; create it and put "
            "clients' .key files in it (prunerd keys NAME), or fix the setting"
        )
    keys: dict[bytes, str] = {}
    for path in sorted(directory.glob("*.key")):
        try:
            public, _ = load_certificate(path)
        except Exception as e:  # noqa: BLE001 - one bad file must not lock every client out
            log.error("skipping key file %s: %s", path, e)
            continue
        if not public or len(public) != 40:
            log.error("skipping key file %s: no 40-character z85 public key in it", path)
            continue
        keys[public] = path.name
    return keys


class KeyRing:
    """The authorised keys by class; ``reload()`` swaps them in whole (read by the ZAP thread)."""

    def __init__(self, operator_dir: Path, monitor_dir: Path | None = None) -> None:
        self.dirs = {OPERATOR: operator_dir, MONITOR: monitor_dir}
        self.classes: dict[bytes, str] = {}
        self._load(strict=True)

    def _load(self, strict: bool) -> None:
        classes: dict[bytes, str] = {}
        for cls, directory in self.dirs.items():
            if directory is None:
                continue
            try:
                keys = load_keys(Path(directory))
            except FileNotFoundError:
                if strict:
                    raise
                log.error(
                    "%s keys: %s does not exist; keeping the keys loaded before", cls, directory
                )
                keys = {k: "" for k, c in self.classes.items() if c == cls}
            for key in keys:
                # A key in both directories is an operator key: the wider class wins.
                if classes.get(key) != OPERATOR:
                    classes[key] = cls
        self.classes = classes  # one assignment: the ZAP thread sees the old or the new dict
        counts = {c: sum(1 for v in classes.values() if v == c) for c in (OPERATOR, MONITOR)}
        log.info("authorised keys: %d operator, %d monitor", counts[OPERATOR], counts[MONITOR])

    def reload(self) -> None:
        self._load(strict=False)

    def key_class(self, z85_key: bytes | str) -> str | None:
        if isinstance(z85_key, str):
            z85_key = z85_key.encode()
        return self.classes.get(z85_key)

    def allows(self, domain: str, z85_key: bytes) -> bool:
        return self.key_class(z85_key) in DOMAINS.get(domain, ())

    # zmq.auth's credentials-provider protocol
    def callback(self, domain: str, key: bytes) -> bool:
        return self.allows(domain, key)


def start_authenticator(ctx: Any, keys: KeyRing) -> ThreadAuthenticator:
    auth = ThreadAuthenticator(ctx, log=log)
    auth.start()
    for domain in DOMAINS:
        auth.configure_curve_callback(domain=domain, credentials_provider=keys)
    return auth


# --------------------------------------------------------------------------- /metrics


def read_basic_auth(path: Path) -> tuple[str, str]:
    """``user:password`` from the first line of ``path``."""
    try:
        line = Path(path).read_text().splitlines()[0].strip()
    except (OSError, IndexError) as e:
        raise ValueError(f"metrics_auth_file {str(path)!r}: cannot read it ({e})") from None
    user, sep, password = line.partition(":")
    if not sep or not user or not password:
        raise ValueError(
            f"metrics_auth_file {str(path)!r} must hold one line 'user:password', non-empty each"
        )
    return user, password


def basic_auth(app: Callable[..., Iterable[bytes]], user: str, password: str) -> Callable[..., Any]:
    """A WSGI app that answers 401 unless the request carries these credentials."""
    expected = b"Basic " + base64.b64encode(f"{user}:{password}".encode())

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        given = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1", "replace")
        if hmac.compare_digest(given, expected):
            return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [("WWW-Authenticate", 'Basic realm="prunerd"'), ("Content-Type", "text/plain")],
        )
        return [b"authentication required\n"]

    return guarded


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass


def serve_wsgi(host: str, port: int, app: Callable[..., Any]) -> Any:
    """Serve ``app`` on a daemon thread; returns the server (``.server_port``, ``.shutdown()``)."""
    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True, name="prunerd-metrics").start()
    return server
