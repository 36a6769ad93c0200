"""How the extender's HTTP server treats connections: header read timeout, connection cap,
keep-alive.

uvicorn bounds a request's body only through the app (the 408 in app.py) and has no header
timeout for h11: a client that opens a connection and sends half a request line, or nothing,
holds that connection (a file descriptor, a slot under `--max-connections`) for as long as it
likes. `HeaderTimeoutProtocol` is uvicorn's h11 protocol with one more timer: while a connection
waits for a request's headers it has `header_timeout_s` to send all of them, counted from the
connection's start for the first request and from the first byte of each later one (between
requests uvicorn's keep-alive timeout applies), or it is closed.

The server always runs this h11 protocol (never uvicorn's "auto" choice, which would switch to
httptools if that happened to be installed), so the timeout is the one tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

# A client that has not sent a request's complete headers by then is disconnected.
# kube-scheduler sends each request at once; 10 s is Go's http.Server guidance too.
DEFAULT_HEADER_TIMEOUT_S = 10.0
# Open connections at most; beyond that uvicorn answers 503. kube-scheduler needs a few per
# scheduler (filter/prioritize in turn, binds in parallel), probes and scrapes one each.
DEFAULT_MAX_CONNECTIONS = 128
# An idle keep-alive connection is closed after this many seconds. kube-scheduler's client
# retries a request that finds its idle connection closed, so this only trades handshakes
# (TLS) against idle connections held.
DEFAULT_KEEP_ALIVE_S = 15


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Connection-level settings of the extender's HTTP server (see the module docstring)."""

    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    keep_alive_s: int = DEFAULT_KEEP_ALIVE_S

    def uvicorn_options(self) -> dict[str, Any]:
        """Keyword arguments for `uvicorn.run` / `uvicorn.Config`."""
        return {
            "http": header_timeout_protocol(self.header_timeout_s),
            "limit_concurrency": self.max_connections,
            "timeout_keep_alive": self.keep_alive_s,
        }


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol that closes a connection whose request headers do not arrive
    within `header_timeout_s` (a class attribute: uvicorn builds protocols itself)."""

    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Bytes of a request whose headers are still incomplete start its clock (uvicorn has
        # just cancelled its keep-alive timer on them); complete headers stop it.
        self._sync_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # A pipelined request already buffered is waiting for headers too (or has them).
        self._sync_header_timer()

    def _waiting_for_headers(self) -> bool:
        return self.conn.their_state is h11.IDLE and not self.transport.is_closing()

    def _sync_header_timer(self) -> None:
        if not self._waiting_for_headers():
            self._cancel_header_timer()
        elif self.conn.trailing_data[0]:
            self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self._waiting_for_headers():
            return
        log.info(
            "closing connection from %s: no complete request headers within %g s",
            self.client,
            self.header_timeout_s,
        )
        with contextlib.suppress(h11.LocalProtocolError):
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()


def header_timeout_protocol(timeout_s: float) -> type[HeaderTimeoutProtocol]:
    """The protocol class with its timeout (uvicorn instantiates it per connection)."""
    if not timeout_s > 0:
        raise ValueError(f"header timeout must be positive, got {timeout_s}")

    class Configured(HeaderTimeoutProtocol):
        header_timeout_s = float(timeout_s)

    return Configured
