"""FlowSummary's packed counters (issue 7): the rarely non-zero ones live in one optional RareCounts,
the categorical values in one shared tuple; FlowResult computes the pipeline's community id on access.

Every old attribute name still reads and writes as before; ``rare`` is None exactly when they
are all at their default, whatever the order of the updates; summaries survive pickling (plain
and the --jobs codec) and positional rebuilding from their fields.
"""

from __future__ import annotations

import dataclasses
import pickle
import sys

import pytest
from hypothesis import given, strategies as st

from analyzer.community_id import community_id
from analyzer.flows.model import CAT_FIELDS, RARE_FIELDS, FlowResult, FlowSummary, RareCounts
from analyzer.model import Endpoint
from analyzer.parallel import decode_result, encode_result

COUNTERS = tuple(n for n in RARE_FIELDS if n != "streams")


def summary(**kw: object) -> FlowSummary:
    args: dict[str, object] = dict(
        capture=1, client=Endpoint("10.0.0.1", 40000), server=Endpoint("192.0.2.1", 143), protocol="imap",
        detected_by="port", saw_syn=True, first_frame=7, last_frame=9, first_ts_ns=10**18,
        last_ts_ns=10**18 + 5,
        packets_to_server=2, packets_to_client=1, bytes_to_server=0, bytes_to_client=0, ended="eof", tls=None,
    )
    args.update(kw)
    return FlowSummary(**args)  # type: ignore[arg-type]


def test_names_and_slots() -> None:
    """The old counter names are not fields (no slot each) but read as 0 / None; key is derived."""
    s = summary()
    names = {f.name for f in dataclasses.fields(FlowSummary)}
    assert not names & set(RARE_FIELDS) and "key" not in names
    assert set(RARE_FIELDS) == {f.name for f in dataclasses.fields(RareCounts)}
    assert s.rare is None
    assert all(getattr(s, n) == 0 for n in COUNTERS) and s.streams is None
    assert s.key == (1, 7)
    assert sys.getsizeof(s) <= 176  # 304 bytes and a 56-byte key tuple before


@pytest.mark.parametrize("name", COUNTERS)
def test_set_get_and_back_to_zero(name: str) -> None:
    s = summary()
    setattr(s, name, 0)
    assert s.rare is None  # writing a zero makes nothing
    setattr(s, name, 5)
    assert getattr(s, name) == 5 and s.rare is not None
    assert all(getattr(s, n) == 0 for n in COUNTERS if n != name)
    setattr(s, name, getattr(s, name) + 2)
    assert getattr(s, name) == 7
    setattr(s, name, 0)
    assert s.rare is None and getattr(s, name) == 0


def test_streams_and_constructor_keywords() -> None:
    s = summary(gaps_to_server=1, late_bytes_to_client=3, key=(1, 7))
    assert (s.gaps_to_server, s.late_bytes_to_client, s.retransmitted_bytes) == (1, 3, 0)
    s.streams = {"to_server": [], "to_client": []}
    s.gaps_to_server = s.late_bytes_to_client = 0
    assert s.rare is not None  # the delivery log is still there
    s.streams = None
    assert s.rare is None
    assert summary(gaps_to_server=0, streams=None).rare is None
    with pytest.raises(ValueError):
        summary(key=(1, 8))


@given(st.lists(st.tuples(st.sampled_from(COUNTERS), st.integers(-3, 3)), max_size=40))
def test_rare_is_none_exactly_when_all_are_zero(updates: list[tuple[str, int]]) -> None:
    """Any sequence of updates: the values are those of plain attributes; rare is None iff all are 0."""
    s = summary()
    want = dict.fromkeys(COUNTERS, 0)
    for name, delta in updates:
        setattr(s, name, getattr(s, name) + delta)
        want[name] += delta
        assert {n: getattr(s, n) for n in COUNTERS} == want
        assert (s.rare is None) == (not any(want.values()))
    assert s == summary(**want)  # the same state as if built with these values


@pytest.mark.parametrize("counted", [False, True])
def test_pickle_round_trip(counted: bool) -> None:
    s = summary()
    if counted:
        s.events_elided, s.commands_elided, s.out_of_window_to_client = 4, 3, 1
    for back in (pickle.loads(pickle.dumps(s)), decode_result(encode_result([s]))[0]):
        assert back == s and back.key == s.key
        assert [getattr(back, n) for n in COUNTERS] == [getattr(s, n) for n in COUNTERS]
        assert (back.rare is None) == (not counted)


def test_positional_rebuild_from_fields() -> None:
    """FlowSummary(*field values) gives the same summary (tests build bulk flows this way)."""
    s = summary(retransmitted_bytes=9)
    again = FlowSummary(*(getattr(s, f.name) for f in dataclasses.fields(FlowSummary)))
    assert again == s and again.retransmitted_bytes == 9


# --------------------------------------------------------------------------- categorical values (shared tuple)

CATS = {"protocol": ("imap", None, "smtp"), "detected_by": ("port", "content", "port+content"),
        "saw_syn": (True, False), "ended": ("eof", "fin", "rst", "idle"), "tls": (None, "implicit", "starttls")}


def test_categorical_values_share_one_slot() -> None:
    """protocol, detected_by, saw_syn, ended and tls are one shared tuple: 144 bytes a summary."""
    a, b = summary(), summary(capture=2)
    assert not set(CAT_FIELDS) & {f.name for f in dataclasses.fields(FlowSummary)}
    assert a.cats is b.cats and sys.getsizeof(a) <= 144
    assert (a.protocol, a.detected_by, a.saw_syn, a.ended, a.tls) == ("imap", "port", True, "eof", None)
    b.ended = "fin"
    assert b.ended == "fin" and a.ended == "eof" and b.cats is summary(ended="fin", capture=3).cats
    with pytest.raises(TypeError):
        FlowSummary(1, Endpoint("10.0.0.1", 1), Endpoint("10.0.0.2", 143), 1, 1, 0, 0, 1, 0, 0, 0)


@given(st.lists(st.sampled_from([(n, v) for n, vs in CATS.items() for v in vs]), max_size=20))
def test_categorical_updates_read_back(updates: list[tuple[str, object]]) -> None:
    s = summary()
    want = {n: getattr(s, n) for n in CAT_FIELDS}
    for name, value in updates:
        setattr(s, name, value)
        want[name] = value
        assert {n: getattr(s, n) for n in CAT_FIELDS} == want
    assert s == summary(**want)
    assert s.saw_syn is want["saw_syn"]  # True and 1 are never merged


def test_categorical_values_of_any_type_are_kept_apart() -> None:
    s = summary(saw_syn=1)
    assert s.saw_syn == 1 and s.saw_syn is not True
    assert summary().saw_syn is True


# --------------------------------------------------------------------------- FlowResult's community id


def test_flow_result_computes_the_pipelines_community_id() -> None:
    s = summary()
    c, v = s.client, s.server
    fr = FlowResult(0, None, s)  # the pipeline's case: not stored, made again on access
    assert fr._community_id is None
    assert fr.community_id == community_id(c.ip, c.port, v.ip, v.port)
    other = FlowResult(1, "1:made-up", s)  # tests pass made-up ids: kept as given
    assert other.community_id == "1:made-up"
    assert FlowResult(1, community_id(c.ip, c.port, v.ip, 25), s).community_id != fr.community_id
    assert fr == FlowResult(0, fr.community_id, s) and fr != other
    assert "community_id='1:" in repr(fr)
