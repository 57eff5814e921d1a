"""report.jsonl: one EVE-style event per finding and per record."""

from __future__ import annotations

import json
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from reportkit import PAYLOADS, analyzed, finding, hostile_result, record_finding, with_extras

from analyzer.protocols.base import wire_text
from analyzer.report.jsonl import EVENT_FINDING, EVENT_RECORD, eve_timestamp, render_jsonl
from analyzer.report.jsonout import report_data

EVE_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+0000$")


def events(text: str) -> list[dict[str, object]]:
    assert text.endswith("\n") or not text
    return [json.loads(line) for line in text.splitlines()]


def test_eve_timestamp() -> None:
    assert eve_timestamp(1_700_000_000_025_003_075) == "2023-11-14T22:13:20.025003+0000"
    assert eve_timestamp(None) is None and eve_timestamp(10**30) is None


def test_one_line_per_finding_and_record_with_eve_keys() -> None:
    base = analyzed("sample.pcapng")
    rec = base.records[0]
    reply_side = finding(flow=rec.flow, stream=("to_client", 0, 5), ts_ns=rec.ts_ns + 5, rule="test.reply")
    res = with_extras(base, findings=[record_finding(rec), reply_side], keep=False)
    doc = report_data(res)
    evs = events(render_jsonl(doc))
    assert len(evs) == len(doc["findings"]) + len(doc["records"])
    kinds = [e["event_type"] for e in evs]
    assert kinds.count(EVENT_FINDING) == 2 and kinds.count(EVENT_RECORD) == len(doc["records"])
    flow = doc["flows"][rec.flow]
    for e in evs:
        assert EVE_TS.match(str(e["timestamp"]))
        assert e["proto"] == "TCP" and isinstance(e["src_port"], int) and isinstance(e["dest_port"], int)
        assert e[str(e["event_type"])]  # the event's own object under its type name, as EVE's "alert"
    fwd = next(e for e in evs if e["event_type"] == EVENT_FINDING and e[EVENT_FINDING]["rule"] == "test.on_record")
    assert (fwd["src_ip"], fwd["src_port"]) == (flow["client"]["ip"], flow["client"]["port"])
    assert fwd["community_id"] == flow["community_id"] and fwd["flow_id"] == rec.flow
    assert fwd["pcap_cnt"] == rec.frames[0] and fwd["pcap_filename"] == doc["captures"][0]["path"]
    back = next(e for e in evs if e["event_type"] == EVENT_FINDING and e[EVENT_FINDING]["rule"] == "test.reply")
    assert (back["src_ip"], back["dest_ip"]) == (flow["server"]["ip"], flow["client"]["ip"])
    r0 = next(e for e in evs if e["event_type"] == EVENT_RECORD and e[EVENT_RECORD]["flow"] == rec.flow)
    assert r0[EVENT_RECORD] == doc["records"][0]
    times = [(e[str(e["event_type"])]["ts_ns"]) for e in evs]
    assert times == sorted(times)


def test_finding_without_flow_has_no_addresses() -> None:
    doc = report_data(with_extras(analyzed("sample.pcapng"), findings=[finding(flow=None, ts_ns=None)], keep=False))
    e = [x for x in events(render_jsonl(doc)) if x["event_type"] == EVENT_FINDING][0]
    assert "src_ip" not in e and e["timestamp"] is None


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(st.sampled_from(PAYLOADS), st.binary(max_size=40).map(wire_text), st.text(max_size=40)),
       raw=st.binary(max_size=64))
def test_any_bytes_one_valid_line_each(value: str, raw: bytes) -> None:
    doc = report_data(hostile_result(value, raw, "tcp_in_order.pcapng"))
    text = render_jsonl(doc)
    text.encode("utf-8")
    assert len(events(text)) == len(doc["findings"]) + len(doc["records"])
