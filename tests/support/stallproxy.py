"""A TCP proxy that can freeze the connections it carries: the test double for a watch whose
connection stays open while nothing arrives (a stalled proxy, a half-dead load balancer).

With `serve_tls` and `upstream_tls` it terminates TLS on both sides (it presents the
certificate of `serve_tls`, e.g. the API server's own, and opens TLS to the target with
`upstream_tls`), so that it sees the HTTP requests in clear and can act on one of them: see
`trap`, which holds a connection at the very moment a given request passes through it.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

HANDSHAKE_TIMEOUT_S = 30.0

Hold = Literal["request", "response", "nothing"]


@dataclass
class Trap:
    """Springs on the first client-to-server chunk that contains `pattern` (see
    `StallProxy.trap`); afterwards it only counts.

    matches: chunks seen with the pattern (a chunk is counted once per occurrence);
    forwarded: of those, how many were passed on to the server.
    sprung: set once the hold is in place (and, for hold="response", once the request has been
    handed to the server); sprung_at: when the chunk was caught (time.monotonic()).
    """

    pattern: bytes
    hold: Hold
    sprung: threading.Event = field(default_factory=threading.Event)
    matches: int = 0
    forwarded: int = 0
    sprung_at: float = 0.0
    armed: bool = field(default=True, repr=False)


class _Plain:
    """One side of a relayed connection, bytes as they are."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv(self) -> bytes:
        return self.sock.recv(65536)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)


class _Tls(_Plain):
    """One side of a relayed connection with TLS terminated here, over memory BIOs: the two
    relay threads of a connection each read one side and write the other, and an SSLObject
    must not be used by two threads at once, so every use of it takes `_lock` (never while
    blocking on the socket), and the encrypted bytes it produces go out in order under
    `_send_lock`."""

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        super().__init__(sock)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
        )
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()

    def handshake(self) -> None:
        while True:
            with self._lock:
                try:
                    self._tls.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
            self._flush()
            if done:
                return
            self._feed_or_eof()

    def recv(self) -> bytes:
        while True:
            with self._lock:
                try:
                    data: bytes | None = self._tls.read(65536)
                except ssl.SSLWantReadError:
                    data = None
                except ssl.SSLZeroReturnError:
                    data = b""
                produced = self._outgoing.pending > 0
            if produced:
                self._flush()
            if data is not None:
                return data
            if not self._feed_or_eof():
                return b""

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            with self._lock:
                written = self._tls.write(view)
            view = view[written:]
            self._flush()

    def shutdown_write(self) -> None:
        with self._lock, contextlib.suppress(ssl.SSLError):
            self._tls.unwrap()  # close_notify; the peer's answer is not awaited
        self._flush()
        self.sock.shutdown(socket.SHUT_WR)

    def _feed_or_eof(self) -> bool:
        raw = self.sock.recv(65536)  # TimeoutError and OSError go to the caller
        if not raw:
            return False
        with self._lock:
            self._incoming.write(raw)
        return True

    def _flush(self) -> None:
        with self._send_lock:
            with self._lock:
                out = self._outgoing.read()
            if out:
                self.sock.sendall(out)


class StallProxy:
    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        serve_tls: ssl.SSLContext | None = None,
        upstream_tls: ssl.SSLContext | None = None,
    ) -> None:
        self.target = (target_host, target_port)
        self.serve_tls = serve_tls
        self.upstream_tls = upstream_tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._stalled: set[int] = set()
        self._responses_held: set[int] = set()
        self._traps: list[Trap] = []
        self._connections: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._freeze_new = False
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        """From now on every connection, open or new, is frozen (until `thaw_new`)."""
        with self._lock:
            self._freeze_new = True
            for client, _ in self._connections:
                self._stalled.add(id(client))

    def thaw_new(self) -> None:
        """Connections made from now on are relayed again; the frozen ones stay frozen, as a
        stalled connection does: only the client giving up on it helps."""
        with self._lock:
            self._freeze_new = False

    def stall_existing(self) -> int:
        """Freeze every connection open now (no bytes either way, nothing closed); new
        connections are relayed normally. Returns how many were frozen."""
        with self._lock:
            for client, _ in self._connections:
                self._stalled.add(id(client))
            return len(self._connections)

    def trap(self, pattern: bytes, *, hold: Hold) -> Trap:
        """Watch the client-to-server bytes (in clear only with TLS terminated here) for
        `pattern`, e.g. an HTTP request line. On the first chunk that contains it:

        - hold="request": that connection freezes as `stall_existing` would, and the chunk is
          not passed on: the server never receives the request, the client waits for an answer;
        - hold="response": the chunk is passed on, but from then on nothing the server sends on
          that connection reaches the client (the client's bytes still flow): the server acts
          on the request, the client never learns it did;
        - hold="nothing": only counted.

        Other connections are not affected, nor are later matches (they are counted in
        `matches` and `forwarded`). `Trap.sprung` is set when the hold is in place."""
        if not pattern:
            raise ValueError("empty pattern")
        trap = Trap(pattern, hold)
        with self._lock:
            self._traps.append(trap)
        return trap

    def close(self) -> None:
        self._closed.set()
        self.listener.close()
        with self._lock:
            for pair in self._connections:
                for sock in pair:
                    with contextlib.suppress(OSError):
                        sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.serve_tls is None and self.upstream_tls is None:
                upstream = socket.create_connection(self.target)
                self._start(client, upstream, _Plain(client), _Plain(upstream))
            else:
                # Handshakes take round trips: not on the accepting thread.
                threading.Thread(target=self._open_tls, args=(client,), daemon=True).start()

    def _open_tls(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            upstream = socket.create_connection(self.target, timeout=HANDSHAKE_TIMEOUT_S)
            client.settimeout(HANDSHAKE_TIMEOUT_S)
            near: _Plain = _Plain(client)
            far: _Plain = _Plain(upstream)
            if self.serve_tls is not None:
                near = _Tls(client, self.serve_tls, server_side=True)
                near.handshake()
            if self.upstream_tls is not None:
                far = _Tls(
                    upstream, self.upstream_tls, server_side=False, server_hostname=self.target[0]
                )
                far.handshake()
        except OSError:  # ssl.SSLError and TimeoutError included
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
            return
        self._start(client, upstream, near, far)

    def _start(
        self, client: socket.socket, upstream: socket.socket, near: _Plain, far: _Plain
    ) -> None:
        with self._lock:
            self._connections.append((client, upstream))
            if self._freeze_new:
                self._stalled.add(id(client))
        for source, sink, to_server in ((near, far, True), (far, near, False)):
            threading.Thread(
                target=self._relay, args=(client, source, sink, to_server), daemon=True
            ).start()

    def _relay(self, client: socket.socket, source: _Plain, sink: _Plain, to_server: bool) -> None:
        source.sock.settimeout(0.2)
        tail = b""  # the end of the previous chunk: a pattern may straddle two
        while not self._closed.is_set():
            if self._frozen(client, to_server):
                time.sleep(0.2)
                continue
            try:
                data = source.recv()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._frozen(client, to_server):
                continue  # frozen while this read was under way: the bytes never arrive
            if not data:
                with contextlib.suppress(OSError):
                    sink.shutdown_write()
                return
            sprung: list[Trap] = []
            if to_server and self._traps:
                if self._inspect(client, tail, data, sprung):
                    for trap in sprung:
                        trap.sprung.set()
                    continue  # held: this request never reaches the server
                tail = (tail + data)[-max(len(t.pattern) for t in self._traps) :]
            try:
                sink.send(data)
            except OSError:
                return
            finally:
                for trap in sprung:
                    trap.sprung.set()

    def _frozen(self, client: socket.socket, to_server: bool) -> bool:
        key = id(client)
        return key in self._stalled or (not to_server and key in self._responses_held)

    def _inspect(self, client: socket.socket, tail: bytes, data: bytes, sprung: list[Trap]) -> bool:
        """Count the traps' patterns in this chunk and put in place the hold of every trap it
        springs (appended to `sprung`); True when the chunk must not be passed on."""
        with self._lock:
            found: list[tuple[Trap, int]] = []
            for trap in self._traps:
                size = len(trap.pattern)
                window = tail[len(tail) - size + 1 :] if size > 1 else b""
                count = (window + data).count(trap.pattern)
                if count:
                    found.append((trap, count))
                    if trap.hold != "nothing" and trap.armed:
                        trap.armed = False
                        trap.sprung_at = time.monotonic()
                        sprung.append(trap)
            held = any(trap.hold == "request" for trap in sprung)
            for trap, count in found:
                trap.matches += count
                if not held:
                    trap.forwarded += count
            for trap in sprung:
                if trap.hold == "request":
                    self._stalled.add(id(client))
                else:
                    self._responses_held.add(id(client))
        return held
