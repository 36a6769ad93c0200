"""A TCP proxy that can freeze the connections it carries: the test double for a watch whose
connection stays open while nothing arrives (a stalled proxy, a half-dead load balancer)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class StallProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._stalled: set[int] = set()
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
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._connections.append((client, upstream))
                if self._freeze_new:
                    self._stalled.add(id(client))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._relay, args=(client, source, sink), daemon=True
                ).start()

    def _relay(self, client: socket.socket, source: socket.socket, sink: socket.socket) -> None:
        source.settimeout(0.2)
        while not self._closed.is_set():
            if id(client) in self._stalled:
                time.sleep(0.2)
                continue
            try:
                data = source.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if id(client) in self._stalled:
                continue  # frozen while this read was under way: the bytes never arrive
            if not data:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
                return
            try:
                sink.sendall(data)
            except OSError:
                return
