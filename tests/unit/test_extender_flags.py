"""`kvsched extender`'s gang flags: parsed, defaulted and bounded as documented in docs/gangs.md."""

from __future__ import annotations

import argparse

import pytest

from scheduler.commands import extender


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kvsched")
    extender.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["extender", *argv])


def test_gang_ttls_default_to_the_documented_values() -> None:
    args = parse()
    assert (args.gang_ttl_seconds, args.gang_absent_ttl_seconds) == (300, 600)


def test_gang_ttls_are_set_and_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("--gang-ttl-seconds", "120", "--gang-absent-ttl-seconds", "1800")
    assert (args.gang_ttl_seconds, args.gang_absent_ttl_seconds) == (120, 1800)
    with pytest.raises(SystemExit) as exited:
        parse("--gang-absent-ttl-seconds", "0")
    assert exited.value.code == 2
    assert "--gang-absent-ttl-seconds" in capsys.readouterr().err
