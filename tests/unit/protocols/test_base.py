"""protocols.base: events are plain slotted dataclasses that keep value equality and hashing."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

from analyzer.model import Direction, Span
from analyzer.protocols import base
from analyzer.protocols.base import Anomaly, Command, IdParam, ImapId, LocatedEvent, Reply, XParam, Xclient

CONCRETE = (
    base.Anomaly, base.Greeting, base.Capabilities, base.Command, base.Reply, base.IdParam, base.ImapId,
    base.XParam, base.Xclient, base.Xforward, base.RcptForward, base.TlsStarted, base.LocatedEvent,
)


def _samples() -> list[object]:
    sp = Span(Direction.TO_SERVER, 0, 10)
    xp = XParam("ADDR", "192.0.2.1", "192.0.2.1", "192.0.2.1", True, ())
    idp = IdParam("x-originating-ip", "192.0.2.1", "quoted", "quoted", 16, 9, 18, 11, None)
    return [
        sp,
        Command(sp, 0, "I", "ID", b'("a" "b")', 12),
        Reply(Span(Direction.TO_CLIENT, 0, 5), 0, "I", "OK", "ID completed.", True),
        Anomaly(sp, "content_gap", "10 bytes", b""),
        ImapId(sp, 0, "I", (idp,), (), 12),
        Xclient(sp, 1, "XCLIENT", (xp,), 30),
        LocatedEvent(Command(sp, 0, None, "NOOP", b"", 6), (1, 2), 1000),
    ]


@pytest.mark.parametrize("cls", CONCRETE)
def test_concrete_event_classes_are_final_slotted_and_not_subclassed(cls: type) -> None:
    """``type(ev) is Reply`` (used by the walks in rules/ and forwarding/) equals isinstance only for final classes."""
    assert getattr(cls, "__final__", False) is True
    assert cls.__subclasses__() == []
    assert "__slots__" in cls.__dict__ and cls.__dictoffset__ == 0  # slotted: no per-instance __dict__
    assert dataclasses.is_dataclass(cls)


@pytest.mark.parametrize("ev", _samples(), ids=lambda e: type(e).__name__)
def test_value_equality_hash_copy_and_pickle(ev: object) -> None:
    twin = copy.deepcopy(ev)
    assert twin == ev and twin is not ev
    assert hash(twin) == hash(ev)
    assert {ev: 1}[twin] == 1 and len({ev, twin}) == 1
    assert pickle.loads(pickle.dumps(ev)) == ev
    assert dataclasses.replace(ev) == ev  # type: ignore[type-var]


def test_different_values_differ() -> None:
    a = Span(Direction.TO_SERVER, 0, 10)
    assert a != Span(Direction.TO_SERVER, 0, 11) and a != Span(Direction.TO_CLIENT, 0, 10)
    assert Reply(a, 0, None, "250", "ok", True) != Reply(a, 0, None, "250", "ok", False)
