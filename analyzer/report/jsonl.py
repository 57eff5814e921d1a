"""``report.jsonl``: one finding or forwarding record per line, for log shippers (Suricata EVE style).

Strategy: each line is a flat JSON object with the keys EVE consumers already index:
``timestamp`` (EVE's ``YYYY-MM-DDTHH:MM:SS.ffffff+0000``), ``event_type``
(``fwdaudit_finding`` / ``fwdaudit_record``), ``flow_id``, ``community_id``, ``src_ip``,
``src_port``, ``dest_ip``, ``dest_port``, ``proto`` (``TCP``), ``pcap_cnt`` (first frame) and
``pcap_filename``; the event itself sits under a key named after the event type, as EVE puts
an alert under ``alert``. The objects are those of ``report.json`` (``findings[]``,
``records[]``), so both formats say the same thing. Source and destination follow the
evidence's direction: a command goes client -> server, a reply server -> client. Lines are
in capture-time order (findings before records at the same instant, then report order), so
the file is deterministic. U+0085, U+2028 and U+2029 are written as escapes, so no splitter can
cut an event in two.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from analyzer.report.jsonout import finding_keys, record_keys, utc_seconds

EVENT_FINDING = "fwdaudit_finding"
EVENT_RECORD = "fwdaudit_record"


def eve_timestamp(ts_ns: int | None) -> str | None:
    """Suricata EVE time: ``2023-11-14T22:13:20.025003+0000`` (UTC, microseconds)."""
    parts = utc_seconds(ts_ns)
    return None if parts is None else f"{parts[0]}.{parts[1] // 1000:06d}+0000"


def _addresses(out: dict[str, Any], src: Mapping[str, Any] | None, dst: Mapping[str, Any] | None) -> None:
    if src is None or dst is None:
        return
    out.update({"src_ip": src["ip"], "src_port": src["port"], "dest_ip": dst["ip"], "dest_port": dst["port"],
                "proto": "TCP"})


def _capture_path(doc: Mapping[str, Any], index: int | None) -> str | None:
    caps = doc["captures"]
    if index is None or not 0 <= index < len(caps):
        return None
    path: str | None = caps[index]["path"]
    return path


def finding_event(doc: Mapping[str, Any], f: Mapping[str, Any]) -> dict[str, Any]:
    """The EVE line of one ``report.json`` finding."""
    out: dict[str, Any] = {"timestamp": eve_timestamp(f["ts_ns"]), "event_type": EVENT_FINDING}
    flows = doc["flows"]
    flow = flows[f["flow"]] if f["flow"] is not None and 0 <= f["flow"] < len(flows) else None
    if flow is not None:
        out["flow_id"] = flow["id"]
        out["community_id"] = flow["community_id"]
        to_client = f["stream"] is not None and f["stream"]["direction"] == "to_client"
        if to_client:
            _addresses(out, flow["server"], flow["client"])
        else:
            _addresses(out, flow["client"], flow["server"])
    if f["frames"]:
        out["pcap_cnt"] = f["frames"][0]
    out["pcap_filename"] = f["capture_file"]
    out[EVENT_FINDING] = dict(f)
    return out


def record_event(doc: Mapping[str, Any], r: Mapping[str, Any]) -> dict[str, Any]:
    """The EVE line of one ``report.json`` forwarding record."""
    out: dict[str, Any] = {"timestamp": eve_timestamp(r["ts_ns"]), "event_type": EVENT_RECORD}
    flows = doc["flows"]
    flow = flows[r["flow"]] if 0 <= r["flow"] < len(flows) else None
    if flow is not None:
        out["flow_id"] = flow["id"]
        out["community_id"] = flow["community_id"]
    _addresses(out, r["sender"], r["receiver"])
    if r["frames"]:
        out["pcap_cnt"] = r["frames"][0]
    out["pcap_filename"] = _capture_path(doc, r["capture"])
    out[EVENT_RECORD] = dict(r)
    return out


def render_jsonl(doc: Mapping[str, Any]) -> str:
    """All findings and records as JSON lines, in capture-time order."""
    return "".join(iter_jsonl(doc))


def iter_jsonl(doc: Mapping[str, Any]) -> Iterator[str]:
    """The lines of :func:`render_jsonl`, one at a time (only the sort keys are held, not the events)."""
    keyed: list[tuple[int, int, int]] = []  # (ts_ns or -1, 0 finding / 1 record, index)
    for i, fk in enumerate(finding_keys(doc)):
        keyed.append((fk[3] if fk[3] is not None else -1, 0, i))
    for i, rk in enumerate(record_keys(doc)):
        keyed.append((rk[4] if rk[4] is not None else -1, 1, i))
    keyed.sort()
    findings, records = doc["findings"], doc["records"]
    for _ts, kind, i in keyed:
        yield dump_line(finding_event(doc, findings[i]) if kind == 0 else record_event(doc, records[i]))


#: characters that some line splitters take for a line end (Python's str.splitlines, JavaScript) but that
#: json.dumps leaves raw in strings; escaped so one event is always exactly one line
_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def dump_line(event: Mapping[str, Any]) -> str:
    """One event as one compact JSON line (UTF-8, ``\\n`` terminated, no other line break inside)."""
    return _LINE_ENCODER.encode(event).translate(_LINE_BREAKS) + "\n"


#: one encoder for every line (``json.dumps`` with options builds a new one per call)
_LINE_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
