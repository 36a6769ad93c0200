"""A fake of the events API (scheduler.state.kube.EventApi) for recorder and app tests."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any


class FakeEventApi:
    """Records created events; can fail (`errors`, raised in order), or hold every write until
    `release` is set (`entered` tells that a write has begun)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.errors: list[Exception] = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def create_event(self, namespace: str, event: Mapping[str, Any]) -> None:
        self.entered.set()
        self.release.wait(10)
        if self.errors:
            raise self.errors.pop(0)
        self.events.append((namespace, dict(event)))

    def reasons(self) -> list[str]:
        return [event["reason"] for _, event in self.events]
