"""The prunerd daemon and its clients.

Public surface:

- :class:`Client` (service.client): submit jobs, read status and results, watch events;
- ``service.monitor``: report a deployed model's inference latency (``monitor.track``,
  ``monitor.observe``) without blocking inference;
- :func:`load_settings` / :class:`Settings` (service.config) and :func:`serve`, which runs the
  daemon (importing it pulls in torch, so it is imported on first use only).
"""

from __future__ import annotations

from typing import Any

from .client import Client, DaemonUnavailable, RequestError
from .config import Settings, load_settings
from .protocol import PROTOCOL_VERSION, Event, ProtocolError


def serve(settings: Settings | None = None, **overrides: Any) -> int:
    """Run the daemon in this process until SIGTERM/SIGINT; returns the exit status."""
    from .daemon import run

    return run(settings or load_settings(**overrides))


__all__ = [
    "PROTOCOL_VERSION",
    "Client",
    "DaemonUnavailable",
    "Event",
    "ProtocolError",
    "RequestError",
    "Settings",
    "load_settings",
    "serve",
]
