"""report.json: the v1 contract kept, the v2 keys, reversible escaping, schema validity, determinism."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reportkit import PAYLOADS, analyzed, chain_of, finding, hostile_result, record_finding, validate, with_extras

from analyzer.protocols.base import wire_bytes, wire_text
from analyzer.report.jsonout import (
    FORMAT_VERSION,
    dumps,
    excerpt_text,
    frame_ranges,
    report_data,
    severity_label,
    text,
    wireshark_filter,
)
from analyzer.rules.base import Severity

# the keys of format_version 1: a contract with outside tools (never renamed or removed)
V1_TOP = {"format_version", "tool", "captures", "summary", "flows", "records"}
V1_SUMMARY = {"captures", "unusable_captures", "packets", "flows", "flows_by_protocol", "flows_with_gaps",
              "tls_flows", "records", "forwarding_records", "records_by_carrier"}
V1_CAPTURE = {"path", "error", "format", "compression", "byte_order", "packets", "bytes", "linktypes", "first_ts",
              "last_ts", "first_ts_ns", "last_ts_ns", "duration_s", "damage", "damage_count", "decode_issues",
              "decode_issue_examples", "decode_counts", "flows_of_interest", "tcp_packets_of_interest"}
V1_FLOW = {"id", "capture", "community_id", "client", "server", "protocol", "detected_by", "tls", "packets", "bytes",
           "gaps", "retransmitted_bytes", "overlap_conflicts", "saw_syn", "first_frame", "last_frame", "first_ts",
           "last_ts", "first_ts_ns", "last_ts_ns", "ended"}
V1_RECORD = {"flow", "capture", "protocol", "carrier", "verb", "tag", "command_seq", "forwarding", "sender",
             "receiver", "frames", "ts", "ts_ns", "stream", "line_len", "params", "forwarded_client",
             "forwarded_server", "forwarded_client_raw", "forwarded_server_raw", "ttl", "ttl_raw", "session_id",
             "forward", "forward_origin", "address", "problems", "reply", "accepted", "trusted", "param_details"}
V2_FINDING = {"rule", "spec", "severity", "title", "message", "flow", "flows", "capture", "community_id", "frames",
              "wireshark_filter", "ts", "stream", "excerpt", "excerpt_hex", "facts"}
V2_CHAIN = {"id", "client", "session_id", "linked_by", "hops", "flows"}
V2_HOP = {"flow", "capture", "sender", "receiver", "forwarded_client", "forwarded_server", "ttl", "session_id", "ts",
          "protocol", "carrier"}


def test_v1_keys_are_kept_and_v2_added() -> None:
    rec = analyzed("sample.pcapng").records[0]
    res = with_extras(analyzed("sample.pcapng"), findings=[record_finding(rec)],
                      chains=[chain_of(analyzed("sample.pcapng").records[:2])])
    doc = report_data(res)
    assert doc["format_version"] == FORMAT_VERSION == 2
    assert V1_TOP | {"findings", "chains"} <= set(doc)
    assert V1_SUMMARY | {"findings_by_severity", "findings_by_rule"} <= set(doc["summary"])
    assert V1_CAPTURE <= set(doc["captures"][0])
    assert all(V1_FLOW <= set(f) for f in doc["flows"])
    assert all(V1_RECORD <= set(r) for r in doc["records"])
    assert all(V2_FINDING <= set(f) for f in doc["findings"])
    assert V2_CHAIN <= set(doc["chains"][0]) and all(V2_HOP <= set(h) for h in doc["chains"][0]["hops"])
    assert doc["tool"] == {"name": "fwdaudit", "version": doc["tool"]["version"]}
    validate(doc)


def test_v1_values_unchanged_for_sample() -> None:
    res = analyzed("sample.pcapng")
    doc = report_data(res)
    assert [f["protocol"] for f in doc["flows"]] == ["imap", "imap", "pop3", "submission", "lmtp"]
    r = doc["records"][0]
    assert r["params"][0] == ["x-session-id", res.records[0].session_id] and r["session_id"] == r["params"][0][1]
    assert r["stream"] == {"direction": "to_server", "start": 0, "end": r["line_len"]}
    assert r["forwarded_client"] == {"ip": "198.51.100.7", "port": 51234}
    assert r["reply"]["text"] == "Trusted ID completed."
    assert "params_b64" not in r and "session_id_b64" not in r  # nothing escaped: no side keys


def test_finding_fields_and_record_link() -> None:
    base = analyzed("sample.pcapng")
    rec = base.records[1]
    f = record_finding(rec, Severity.MEDIUM)
    loose = finding(flow=None, capture=None, frames=(), stream=None, ts_ns=None, excerpt=b"")
    doc = report_data(with_extras(base, findings=[f, loose], keep=False))
    a, b = doc["findings"]
    flow = doc["flows"][rec.flow]
    assert a["severity"] == "medium" and a["flow"] == rec.flow and a["flows"] == [rec.flow]
    assert a["community_id"] == flow["community_id"] and a["protocol"] == flow["protocol"]
    assert a["record"] == 1 and a["capture_file"] == doc["captures"][0]["path"]
    assert a["stream"] == {"direction": "to_server", "start": rec.stream_start, "end": rec.stream_end}
    assert bytes.fromhex(a["excerpt_hex"]) == rec.excerpt and a["excerpt"] == rec.excerpt.decode()
    assert a["wireshark_filter"] == wireshark_filter(rec.frames) and a["ts_ns"] == rec.ts_ns
    assert b["record"] is None and b["wireshark_filter"] is None and b["community_id"] is None
    assert b["stream"] is None and b["ts"] is None and b["flows"] == []
    assert doc["summary"]["findings_by_severity"] == {"high": 1, "medium": 1, "low": 0, "info": 0}
    assert doc["summary"]["findings_by_rule"] == {"test.on_record": 1, "test.synthetic": 1}
    validate(doc)


@pytest.mark.parametrize("frames, expected", [
    ((), None),
    ((57,), "frame.number == 57"),
    ((58, 57), "frame.number in {57 58}"),
    ((5, 7, 8, 9, 10, 12, 7), "frame.number in {5 7..10 12}"),
])
def test_wireshark_filter(frames: tuple[int, ...], expected: str | None) -> None:
    assert wireshark_filter(frames) == expected


def test_frame_ranges_bounded_filter() -> None:
    frames = tuple(range(0, 1000, 2))
    assert len(frame_ranges(frames)) == 500
    assert wireshark_filter(frames) is not None and wireshark_filter(frames).count(" ") < 80  # type: ignore[union-attr]


def test_severity_labels() -> None:
    assert [severity_label(s) for s in Severity] == ["info", "low", "medium", "high"]
    assert severity_label(40) == "high" and severity_label(99) == "info" and severity_label("MEDIUM") == "medium"


def test_facts_object_keeps_repeated_names() -> None:
    doc = report_data(with_extras(analyzed("sample.pcapng"),
                                  findings=[finding(facts=(("k", "1"), ("k", "2"), ("k", "3")))], keep=False))
    assert doc["findings"][0]["facts"] == {"k": "1", "k#2": "2", "k#3": "3"}


def test_escaping_is_reversible_with_b64() -> None:
    value = wire_text(b"ab\\c\xff\x00")  # a backslash and a byte that is not UTF-8
    res = hostile_result(value, b"X \xff\r\n")
    doc = report_data(res)
    r = doc["records"][0]
    assert r["session_id"] == "ab\\\\c\\xff\x00"  # backslash doubled only because escaping happened
    assert base64.b64decode(r["session_id_b64"]) == wire_bytes(value)
    assert [base64.b64decode(x) for x in r["params_b64"][0]] == [wire_bytes(value)] * 2
    assert r["params_b64"][2] == [r["params_b64"][2][0], None]  # NIL value: nothing to restore
    assert r["forwarded_client"]["ip_b64"] == r["session_id_b64"]
    assert base64.b64decode(r["reply"]["text_b64"]) == wire_bytes(value + "\n" + value)
    assert r["excerpt_hex"] == b"X \xff\r\n".hex() and r["excerpt"] == "X \\xff\r\n"
    f = doc["findings"][-2]
    assert base64.b64decode(f["message_b64"]) == wire_bytes(value)
    assert set(f["facts_b64"]) == set(f["facts"])
    assert base64.b64decode(doc["chains"][-1]["session_id_b64"]) == wire_bytes(value)
    validate(doc)
    dumps(doc).encode("utf-8")  # strict UTF-8: no lone surrogate left


def test_text_leaves_valid_text_alone() -> None:
    assert text("plain \\x41 \u202e") == "plain \\x41 \u202e"
    assert text(None) is None
    assert excerpt_text(b"\xc3\xa9\xff") == "\u00e9\\xff"


def test_generated_at_only_when_asked_and_deterministic() -> None:
    res = analyzed("xss.pcapng")
    assert "generated_at" not in report_data(res)
    assert report_data(res, generated_at="2024-01-02T03:04:05.000000000Z")["generated_at"].startswith("2024")
    assert dumps(report_data(res)) == dumps(report_data(res))


def test_xss_capture_report_is_valid() -> None:
    doc = report_data(analyzed("xss.pcapng"))
    validate(doc)
    text_out = dumps(doc)
    text_out.encode("utf-8")
    back = json.loads(text_out)
    sids = [r["session_id"] for r in back["records"]]
    assert "<script>window.__pwned=1</script>" in sids  # kept as data, exactly


def test_summary_coverage_and_time_span() -> None:
    doc = report_data(analyzed("tcp_gap.pcapng"))
    cov = doc["summary"]["coverage"]
    assert cov["flows_with_gaps"] == 1 and cov["gap_bytes"] > 0
    span = doc["summary"]["time_span"]
    assert span["first_ts_ns"] <= span["last_ts_ns"] and span["first_ts"].endswith("Z")


hostile_text = st.one_of(
    st.sampled_from(PAYLOADS),
    st.binary(max_size=48).map(wire_text),
    st.text(max_size=48),
)


@settings(max_examples=200, deadline=None)
@given(value=hostile_text, raw=st.binary(max_size=300))
def test_any_bytes_give_valid_reversible_json(value: str, raw: bytes) -> None:
    doc = report_data(hostile_result(value, raw))
    out = dumps(doc)
    out.encode("utf-8")  # never a lone surrogate
    back = json.loads(out)
    r = back["records"][0]
    restored = base64.b64decode(r["session_id_b64"]).decode("utf-8", "surrogateescape") if "session_id_b64" in r \
        else r["session_id"]
    assert restored == value
    assert bytes.fromhex(back["findings"][-2]["excerpt_hex"]) == raw
    validate(back)


@pytest.mark.parametrize("name", ["sample.pcapng", "xss.pcapng", "tcp_gap.pcapng"])
def test_streamed_json_equals_the_indented_document(name: str) -> None:
    """The streamed layout (C encoder, one item per line, lazy items) is the same document as the old
    fully indented one, and the lazy and the built document give the same bytes."""
    import analyzer.report.jsonout as jsonout

    res = analyzed(name)
    doc = report_data(res)
    streamed = dumps(jsonout.report_doc(res))
    assert streamed == dumps(doc)
    old_layout = json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    assert json.loads(streamed) == json.loads(old_layout)
    assert list(json.loads(streamed)) == list(doc)
    lines = streamed.splitlines()
    assert sum(1 for line in lines if line.startswith('  {"flow":')) == len(doc["records"])
    assert sum(1 for line in lines if line.startswith('  {"rule":')) == len(doc["findings"])
    assert lines[0] == "{" and lines[-1] == "}" and streamed.endswith("}\n")
    validate(json.loads(streamed))


@settings(max_examples=200, deadline=None)
@given(value=hostile_text, raw=st.binary(max_size=300))
def test_any_bytes_stream_the_same_document(value: str, raw: bytes) -> None:
    """Streamed from the lazy document or dumped from the built one: the same bytes, the same data as the
    indented layout, and every format renders from the lazy document without raising."""
    import analyzer.report.jsonout as jsonout
    from analyzer.report import render_reports

    res = hostile_result(value, raw)
    doc = report_data(res)
    streamed = dumps(jsonout.report_doc(res))
    assert streamed == dumps(doc)
    assert json.loads(streamed) == json.loads(json.dumps(doc, indent=1, ensure_ascii=False))
    out = render_reports(res, ("html", "json", "jsonl", "csv"))
    assert out["report.json"] == streamed


def test_lazy_items_are_built_on_read() -> None:
    import analyzer.report.jsonout as jsonout

    res = analyzed("sample.pcapng")
    doc = jsonout.report_doc(res)
    records = doc["records"]
    assert isinstance(records, jsonout.LazyItems) and len(records) == len(res.records)
    assert records[0] == report_data(res)["records"][0] and records[0] is not records[0]  # never stored
    assert records[1:3] == report_data(res)["records"][1:3]
    assert jsonout.report_data(res)["summary"] == doc["summary"]


def test_out_of_range_references_do_not_break_the_report() -> None:
    odd = finding(flow=999, flows=(999, 3), capture=7, frames=(5, 5, 4))
    empty_chain = chain_of([], chain_id=5)
    doc = report_data(with_extras(analyzed("sample.pcapng"), findings=[odd], chains=[empty_chain], keep=False))
    f = doc["findings"][0]
    assert f["community_id"] is None and f["protocol"] is None and f["capture_file"] is None
    assert f["frames"] == [4, 5] and f["wireshark_filter"] == "frame.number in {4 5}"
    assert doc["chains"][0]["hops"] == [] and doc["chains"][0]["flows"] == []
    validate(doc)
    from analyzer.report import render_reports
    from analyzer.report.html import render_html

    render_html(doc)
    render_reports(with_extras(analyzed("sample.pcapng"), findings=[odd], chains=[empty_chain], keep=False),
                   ("html", "json", "jsonl", "csv"))
