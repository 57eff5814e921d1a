"""``report.json``: the machine-readable report. Its key names are a contract.

FORMAT_VERSION history (bump on any change a consumer could notice; keys are only
ever added, never renamed or removed):

1. First version: ``format_version``, ``tool``, ``captures``, ``summary``, ``flows``, ``records``.
2. Added ``findings`` and ``chains``; ``summary`` gained ``findings``, ``findings_by_severity``,
   ``findings_by_rule``, ``chains``, ``forwarding_records_by_protocol``, ``time_span`` and
   ``coverage``; ``records[]`` gained ``excerpt`` and ``excerpt_hex`` (the command as sent, bounded);
   ``generated_at`` (only with ``--timestamp``); ``*_b64`` side keys next to wire
   text that had to be escaped (see :func:`text`); ``captures[].path`` is escaped like wire text.
   A JSON Schema of this version ships as ``analyzer/report/schema.json``.

Strategy: this module turns an ``AnalysisResult`` into one document (the "doc"); every
other format (HTML, CSV, JSONL) is rendered from that document, so all formats say the same
thing. :func:`report_doc` builds it lazily: ``captures`` and ``summary`` (counted in one cheap
pass over the result objects) are plain data, while the arrays that grow with the capture
(:data:`BIG_ARRAYS`) are :class:`LazyItems` that build each item's dict only when it is read,
so a writer streaming them holds one item at a time. :func:`report_data` is the same document
with every array built (tests, comparisons). :func:`iter_json` streams it with CPython's C
encoder: one line per item of a top-level array, the small objects indented. Wire text arrives as ``str`` decoded with surrogateescape; :func:`text` makes it
valid UTF-8 and, where it had to escape anything, :func:`put_text` adds a ``<key>_b64``
sibling holding the original bytes, so escaping stays reversible without guessing.
Findings and chains are read by attribute only (duck typing), so objects from any rule
module (or a test) serialize the same way.
"""

from __future__ import annotations

import base64
import datetime
import functools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol, overload

from analyzer import __version__
from analyzer.flows.model import FlowResult
from analyzer.forwarding.model import ForwardingRecord
from analyzer.model import Endpoint
from analyzer.pipeline import AnalysisResult, CaptureResult
from analyzer.rules.base import Finding, Severity

FORMAT_VERSION = 2

#: at most this many decode-issue examples per capture in the report (counts are complete)
MAX_ISSUE_EXAMPLES = 200
#: at most this many frame numbers listed per finding (they come from one command or reply, so rarely more)
MAX_FINDING_FRAMES = 256
#: at most this many ranges in a finding's Wireshark filter (longer lists end with the first frames only)
MAX_FILTER_RANGES = 64

#: severity labels from the most to the least severe (``Severity`` in ``analyzer.rules.base``)
SEVERITY_ORDER = ("high", "medium", "low", "info")


def utc_seconds(ts_ns: int | None) -> tuple[str, int] | None:
    """(``YYYY-MM-DDTHH:MM:SS`` in UTC, the nanoseconds within that second), or None when not representable."""
    if ts_ns is None:
        return None
    sec, ns = divmod(ts_ns, 10**9)
    text_sec = _utc_second(sec)
    return None if text_sec is None else (text_sec, ns)


@functools.lru_cache(maxsize=4096)  # a capture's events share few seconds: strftime once per second
def _utc_second(sec: int) -> str | None:
    try:
        base = datetime.datetime.fromtimestamp(sec, tz=datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
    return base.strftime("%Y-%m-%dT%H:%M:%S")


def iso_ns(ts_ns: int | None) -> str | None:
    """RFC 3339 UTC time with nanoseconds, e.g. ``2024-01-02T03:04:05.123456789Z``."""
    parts = utc_seconds(ts_ns)
    return None if parts is None else f"{parts[0]}.{parts[1]:09d}Z"


def text(value: str | None) -> str | None:
    """Wire text for JSON: undecodable bytes (surrogate escapes) become ``\\xNN``; backslashes are doubled
    only then, so ordinary text stays as it was and the escaping is reversible (see ``*_b64`` keys)."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        out = []
        for ch in value:
            o = ord(ch)
            if 0xDC80 <= o <= 0xDCFF:
                out.append(f"\\x{o - 0xDC00:02x}")
            elif ch == "\\":
                out.append("\\\\")
            elif 0xD800 <= o <= 0xDFFF:
                out.append(f"\\u{o:04x}")
            else:
                out.append(ch)
        return "".join(out)


def original_bytes(value: str) -> bytes:
    """The bytes a wire string stands for (inverse of ``wire_text``; other lone surrogates kept as UTF-8)."""
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


def needs_b64(value: str | None) -> bool:
    """True when :func:`text` has to escape ``value`` (it holds bytes that are not UTF-8)."""
    if value is None:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def b64(value: str) -> str:
    """Base64 of the original bytes of a wire string."""
    return base64.b64encode(original_bytes(value)).decode("ascii")


def put_text(out: dict[str, Any], key: str, value: str | None) -> None:
    """``out[key] = text(value)``, plus ``out[key + "_b64"]`` when escaping happened."""
    if value is None:
        out[key] = None
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # bytes that were not UTF-8: escaped text plus the exact bytes
        out[key] = text(value)
        out[key + "_b64"] = b64(value)
        return
    out[key] = value  # the common case: valid UTF-8 as it is (what text() returns)


def _pairs(out: dict[str, Any], key: str, pairs: Iterable[tuple[str | None, str | None]]) -> None:
    """A list of ``[name, value]`` pairs; ``<key>_b64`` (same shape, null where nothing was escaped) if needed."""
    items = list(pairs)
    out[key] = [[text(n), text(v)] for n, v in items]
    if any(needs_b64(n) or needs_b64(v) for n, v in items):
        out[key + "_b64"] = [
            [b64(n) if n is not None and needs_b64(n) else None, b64(v) if v is not None and needs_b64(v) else None]
            for n, v in items
        ]


def _capture(c: CaptureResult) -> dict[str, Any]:
    info = c.info
    out: dict[str, Any] = {}
    put_text(out, "path", c.path)
    out["error"] = text(c.error)
    if info is None:
        return out
    span_ns = None
    if info.first_ts_ns is not None and info.last_ts_ns is not None:
        span_ns = info.last_ts_ns - info.first_ts_ns
    out.update({
        "format": info.format,
        "compression": info.compression,
        "byte_order": info.byte_order,
        "packets": info.packets,
        "bytes": info.bytes,
        "linktypes": {str(k): v for k, v in sorted(info.linktypes.items())},
        "first_ts": iso_ns(info.first_ts_ns),
        "last_ts": iso_ns(info.last_ts_ns),
        "first_ts_ns": info.first_ts_ns,
        "last_ts_ns": info.last_ts_ns,
        "duration_s": None if span_ns is None else span_ns / 1e9,
        "damage": [
            {"offset": d.offset, "frame": d.frame, "code": d.code, "detail": text(d.detail)} for d in info.damage
        ],
        "damage_count": len(info.damage) + info.damage_dropped,
        "decode_issues": dict(sorted(c.decode_issue_counts.items())),
        "decode_issue_examples": [
            {"frame": i.frame, "code": i.code, "detail": text(i.detail)} for i in c.decode_issues[:MAX_ISSUE_EXAMPLES]
        ],
        "decode_counts": dict(sorted(c.decode_counts.items())),
    })
    if c.stats is not None:
        out["flows_of_interest"] = c.stats.flows_of_interest
        out["tcp_packets_of_interest"] = c.stats.tcp_packets
    return out


def _flow(f: FlowResult) -> dict[str, Any]:
    s = f.summary
    return {
        "id": f.id,
        "capture": s.capture,
        "community_id": f.community_id,
        "client": s.client.as_dict(),
        "server": s.server.as_dict(),
        "protocol": s.protocol,
        "detected_by": s.detected_by,
        "tls": s.tls,
        "packets": {"to_server": s.packets_to_server, "to_client": s.packets_to_client},
        "bytes": {"to_server": s.bytes_to_server, "to_client": s.bytes_to_client},
        "gaps": {
            "to_server": {"count": s.gaps_to_server, "bytes": s.gap_bytes_to_server},
            "to_client": {"count": s.gaps_to_client, "bytes": s.gap_bytes_to_client},
        },
        "retransmitted_bytes": s.retransmitted_bytes,
        "overlap_conflicts": s.overlap_conflicts,
        "dropped": {
            "to_server": {"out_of_window_segments": s.out_of_window_to_server, "late_bytes": s.late_bytes_to_server,
                          "after_fin_bytes": s.after_fin_bytes_to_server},
            "to_client": {"out_of_window_segments": s.out_of_window_to_client, "late_bytes": s.late_bytes_to_client,
                          "after_fin_bytes": s.after_fin_bytes_to_client},
        },
        # plain commands and replies past the first ones that no record or rule needed: counted, not kept
        "elided": {"commands": s.commands_elided, "replies": s.replies_elided},
        "saw_syn": s.saw_syn,
        "first_frame": s.first_frame,
        "last_frame": s.last_frame,
        "first_ts": iso_ns(s.first_ts_ns),
        "last_ts": iso_ns(s.last_ts_ns),
        "first_ts_ns": s.first_ts_ns,
        "last_ts_ns": s.last_ts_ns,
        "ended": s.ended,
    }


def _ep(e: Endpoint | None) -> dict[str, Any] | None:
    """An endpoint; its ``ip`` may be raw wire text (an invalid forwarded address), hence ``ip_b64``."""
    if e is None:
        return None
    out: dict[str, Any] = {}
    put_text(out, "ip", e.ip)
    out["port"] = e.port
    return out


def _record(r: ForwardingRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "flow": r.flow,
        "capture": r.capture,
        "protocol": r.protocol,
        "carrier": r.carrier,
        "verb": r.verb,
    }
    put_text(out, "tag", r.tag)
    out.update({
        "command_seq": r.command_seq,
        "forwarding": r.forwarding,
        "sender": _ep(r.sender),
        "receiver": _ep(r.receiver),
        "frames": list(r.frames),
        "ts": iso_ns(r.ts_ns),
        "ts_ns": r.ts_ns,
        "stream": {"direction": "to_server", "start": r.stream_start, "end": r.stream_end},
        "line_len": r.line_len,
    })
    _pairs(out, "params", r.params)
    out["forwarded_client"] = _ep(r.forwarded_client)
    out["forwarded_server"] = _ep(r.forwarded_server)
    for key, (ip, port) in (("forwarded_client_raw", r.forwarded_client_raw),
                            ("forwarded_server_raw", r.forwarded_server_raw)):
        raw: dict[str, Any] = {}
        put_text(raw, "ip", ip)
        put_text(raw, "port", port)
        out[key] = raw
    out["ttl"] = r.ttl
    put_text(out, "ttl_raw", r.ttl_raw)
    put_text(out, "session_id", r.session_id)
    _pairs(out, "forward", ((v.name, v.value) for v in r.forward))
    out["forward_origin"] = r.forward[0].origin if r.forward else None
    put_text(out, "address", r.address)
    out["problems"] = [text(p) for p in r.problems]
    if r.reply is None:
        out["reply"] = None
    else:
        reply: dict[str, Any] = {}
        put_text(reply, "code", r.reply.code)
        put_text(reply, "text", r.reply.text)
        reply["frames"] = list(r.reply.frames)
        reply["ts"] = iso_ns(r.reply.ts_ns)
        out["reply"] = reply
    out["accepted"] = r.accepted
    out["trusted"] = r.trusted
    out["excerpt"] = excerpt_text(r.excerpt)
    out["excerpt_hex"] = r.excerpt.hex()
    details = []
    for d in r.details:
        det: dict[str, Any] = {}
        put_text(det, "name", d.name)
        det.update({"form": d.form, "name_octets": d.name_octets, "value_octets": d.value_octets,
                    "name_wire": d.name_wire, "value_wire": d.value_wire})
        put_text(det, "raw", d.raw)
        put_text(det, "lenient", d.lenient)
        det["literal_waited"] = d.literal_waited
        det["problems"] = [text(p) for p in d.problems]
        details.append(det)
    out["param_details"] = details
    return out


# ---------------------------------------------------------------------------- findings


def severity_label(sev: object) -> str:
    """``high``/``medium``/``low``/``info`` for a :class:`Severity` (or its int value / name)."""
    if isinstance(sev, Severity):
        return sev.label
    if isinstance(sev, int):
        try:
            return Severity(sev).label
        except ValueError:
            return "info"
    label = str(sev).strip().lower()
    return label if label in SEVERITY_ORDER else "info"


def frame_ranges(frames: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted, de-duplicated frame numbers as inclusive runs: ``[1, 2, 3, 7]`` -> ``[(1, 3), (7, 7)]``."""
    runs: list[tuple[int, int]] = []
    for n in sorted(set(frames)):
        if runs and n == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    return runs


def wireshark_filter(frames: Sequence[int]) -> str | None:
    """A display filter selecting the frames: ``frame.number == 5``, ``frame.number in {57 58}``,
    ``frame.number in {5 7..9}`` (runs of three or more as ranges)."""
    runs = frame_ranges(frames)[:MAX_FILTER_RANGES]
    if not runs:
        return None
    if len(runs) == 1 and runs[0][0] == runs[0][1]:
        return f"frame.number == {runs[0][0]}"
    parts = []
    for a, b in runs:
        if b - a >= 2:
            parts.append(f"{a}..{b}")
        else:
            parts.extend(str(n) for n in range(a, b + 1))
    return "frame.number in {" + " ".join(parts) + "}"


def excerpt_text(data: bytes) -> str:
    """Evidence bytes as JSON text: UTF-8 kept, other bytes as ``\\xNN`` (``excerpt_hex`` has the exact bytes)."""
    return text(data.decode("utf-8", "surrogateescape")) or ""


def _facts(out: dict[str, Any], facts: Iterable[tuple[object, object]]) -> None:
    """Facts as an object; a repeated name gets ``#2``, ``#3`` ... so nothing is lost."""
    obj: dict[str, str] = {}
    raw: dict[str, str] = {}
    for name, value in facts:
        key = text(str(name)) or ""
        if key in obj:
            n = 2
            while f"{key}#{n}" in obj:
                n += 1
            key = f"{key}#{n}"
        sval = str(value)
        obj[key] = text(sval) or ""
        if needs_b64(sval):
            raw[key] = b64(sval)
    out["facts"] = obj
    if raw:
        out["facts_b64"] = raw


class _RecordIndex:
    """Finds the forwarding record a finding's evidence points at: same flow and stream start, else frames."""

    def __init__(self, records: Sequence[ForwardingRecord]) -> None:
        self.by_start: dict[tuple[int, int], int] = {}
        self.by_frame: dict[tuple[int, int], int] = {}
        for i, r in enumerate(records):
            self.by_start.setdefault((r.flow, r.stream_start), i)
            for fr in r.frames:
                self.by_frame.setdefault((r.capture, fr), i)

    def find(self, f: Finding) -> int | None:
        if f.flow is not None and f.stream is not None and f.stream[0] == "to_server":
            hit = self.by_start.get((f.flow, f.stream[1]))
            if hit is not None:
                return hit
        if f.capture is not None:
            for fr in f.frames:
                hit = self.by_frame.get((f.capture, fr))
                if hit is not None:
                    return hit
        return None


class _CommunityIds:
    """Community ids of flows by id, remembered for the findings (a flow computes its own on each read, ~4 us)."""

    LIMIT = 4096  #: flows remembered (ours: emptied when full; findings come in frame order, a few flows at a time)

    def __init__(self, flows: Sequence[FlowResult]) -> None:
        self.flows = flows
        self.known: dict[int, str] = {}

    def __call__(self, flow: int) -> str:
        cid = self.known.get(flow)
        if cid is None:
            if len(self.known) >= self.LIMIT:
                self.known.clear()
            cid = self.known[flow] = self.flows[flow].community_id
        return cid


def _finding(f: Finding, flows: Sequence[FlowResult], captures: Sequence[CaptureResult],
             records: _RecordIndex, cids: Callable[[int], str] | None = None) -> dict[str, Any]:
    flow = f.flow if f.flow is not None and 0 <= f.flow < len(flows) else None
    frames = sorted(set(f.frames))[:MAX_FINDING_FRAMES]
    capture_file = None
    if f.capture is not None and 0 <= f.capture < len(captures):
        capture_file = text(captures[f.capture].path)
    out: dict[str, Any] = {
        "rule": text(f.rule),
        "spec": text(f.spec),
        "severity": severity_label(f.severity),
        "title": text(f.title),
    }
    put_text(out, "message", f.message)
    out.update({
        "flow": f.flow,
        "flows": list(f.flows) if f.flows else ([] if f.flow is None else [f.flow]),
        "capture": f.capture,
        "capture_file": capture_file,
        "protocol": flows[flow].summary.protocol if flow is not None else None,
        "community_id": (flows[flow].community_id if cids is None else cids(flow)) if flow is not None else None,
        "frames": frames,
        "wireshark_filter": wireshark_filter(frames),
        "ts": iso_ns(f.ts_ns),
        "ts_ns": f.ts_ns,
        "stream": None if f.stream is None else {
            "direction": f.stream[0], "start": f.stream[1], "end": f.stream[2],
        },
        "excerpt": excerpt_text(f.excerpt),
        "excerpt_hex": f.excerpt.hex(),
        "record": records.find(f),
    })
    _facts(out, f.facts)
    return out


# ---------------------------------------------------------------------------- chains


def _hop(h: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "flow": h.flow,
        "capture": h.capture,
        "record_index": h.record_index,
        "sender": _ep(h.sender),
        "receiver": _ep(h.receiver),
        "forwarded_client": _ep(h.forwarded_client),
        "forwarded_server": _ep(h.forwarded_server),
        "ttl": h.ttl,
    }
    put_text(out, "session_id", h.session_id)
    out.update({"ts": iso_ns(h.ts_ns), "ts_ns": h.ts_ns, "protocol": h.protocol, "carrier": h.carrier})
    return out


def _chain(c: Any) -> dict[str, Any]:
    hops = [_hop(h) for h in c.hops]
    out: dict[str, Any] = {"id": c.id, "client": _ep(c.client)}
    put_text(out, "session_id", c.session_id)
    out["linked_by"] = list(c.linked_by)
    out["hops"] = hops
    out["flows"] = [h["flow"] for h in hops]
    return out


# ---------------------------------------------------------------------------- the document


def _count(keys: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in keys:
        out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items()))


class LazyItems(Sequence[dict[str, Any]]):
    """A read-only list of report items (dicts) built from result objects on each read, never stored."""

    __slots__ = ("_objs", "_build")

    def __init__(self, objs: Sequence[Any], build: Callable[[Any], dict[str, Any]]) -> None:
        self._objs = objs
        self._build = build

    def __len__(self) -> int:
        return len(self._objs)

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, i: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, i: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(i, slice):
            return [self._build(o) for o in self._objs[i]]
        return self._build(self._objs[i])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        build = self._build
        for o in self._objs:
            yield build(o)

    @property
    def objects(self) -> Sequence[Any]:
        """The result objects the items are built from."""
        return self._objs


#: (flow, protocol, carrier, forwarding, ts_ns) of a record: what the summaries and the timeline need
RecordKey = tuple[int, str, str, bool, "int | None"]
#: (flow, severity label, rule, ts_ns, record index) of a finding
FindingKey = tuple["int | None", str, "str | None", "int | None", "int | None"]


def record_keys(doc: Mapping[str, Any]) -> Iterator[RecordKey]:
    """:data:`RecordKey` of every record, read from the result objects when the document is lazy."""
    records = doc["records"]
    if isinstance(records, LazyItems):
        for r in records.objects:
            yield r.flow, r.protocol, r.carrier, bool(r.forwarding), r.ts_ns
    else:
        for d in records:
            yield d["flow"], d["protocol"], d["carrier"], bool(d["forwarding"]), d["ts_ns"]


def finding_keys(doc: Mapping[str, Any]) -> Iterator[FindingKey]:
    """:data:`FindingKey` of every finding, read from the result objects when the document is lazy."""
    findings = doc["findings"]
    if isinstance(findings, LazyItems) and isinstance(doc["records"], LazyItems):
        index = _RecordIndex(doc["records"].objects)
        for f in findings.objects:
            yield f.flow, severity_label(f.severity), text(f.rule), f.ts_ns, index.find(f)
    else:
        for d in findings:
            yield d["flow"], d["severity"], d["rule"], d["ts_ns"], d["record"]


def _summary(result: AnalysisResult) -> dict[str, Any]:
    """The ``summary`` object, counted from the result objects (no item dict is built)."""
    flows = [f.summary for f in result.flows]
    by_severity = {label: 0 for label in SEVERITY_ORDER}
    for fd in result.findings:
        by_severity[severity_label(fd.severity)] += 1
    readable = [c for c in result.captures if c.info is not None]
    firsts = [c.info.first_ts_ns for c in readable if c.info is not None and c.info.first_ts_ns is not None]
    lasts = [c.info.last_ts_ns for c in readable if c.info is not None and c.info.last_ts_ns is not None]
    first_ns = min(firsts) if firsts else None
    last_ns = max(lasts) if lasts else None
    with_gaps = sum(1 for s in flows if s.gaps_to_server or s.gaps_to_client)
    return {
        "captures": len(result.captures),
        "unusable_captures": len(result.unusable),
        "packets": sum(c.info.packets for c in result.captures if c.info is not None),
        "flows": len(flows),
        "flows_by_protocol": _count(s.protocol or "other" for s in flows),
        "flows_with_gaps": with_gaps,
        "tls_flows": sum(1 for s in flows if s.tls),
        "records": len(result.records),
        "forwarding_records": sum(1 for r in result.records if r.forwarding),
        "records_by_carrier": _count(f"{r.protocol}/{r.carrier}" for r in result.records),
        "forwarding_records_by_protocol": _count(r.protocol for r in result.records if r.forwarding),
        "findings": len(result.findings),
        "findings_by_severity": by_severity,
        "findings_by_rule": _count(text(fd.rule) or "" for fd in result.findings),
        "chains": len(result.chains),
        "time_span": {
            "first_ts": iso_ns(first_ns),
            "last_ts": iso_ns(last_ns),
            "first_ts_ns": first_ns,
            "last_ts_ns": last_ns,
            "duration_s": None if first_ns is None or last_ns is None else (last_ns - first_ns) / 1e9,
        },
        "coverage": {
            "tls_implicit_flows": sum(1 for s in flows if s.tls == "implicit"),
            "starttls_flows": sum(1 for s in flows if s.tls == "starttls"),
            "flows_with_gaps": with_gaps,
            "gap_bytes": sum(s.gap_bytes_to_server + s.gap_bytes_to_client for s in flows),
            "overlap_conflicts": sum(s.overlap_conflicts for s in flows),
            "flows_with_dropped_segments": sum(1 for s in flows if _dropped_of(s)),
            "out_of_window_segments": sum(s.out_of_window_to_server + s.out_of_window_to_client for s in flows),
            "flows_without_syn": sum(1 for s in flows if not s.saw_syn),
            "damaged_captures": sum(1 for c in readable if c.info is not None and (
                c.info.damage or c.info.damage_dropped)),
            "decode_issues": sum(sum(c.decode_issue_counts.values()) for c in result.captures),
            "unusable_captures": len(result.unusable),
        },
    }


def _dropped_of(s: Any) -> int:
    """Segments and bytes a flow's reassembly dropped (out of window, late, after FIN), all summed."""
    return int(s.out_of_window_to_server + s.late_bytes_to_server + s.after_fin_bytes_to_server
            + s.out_of_window_to_client + s.late_bytes_to_client + s.after_fin_bytes_to_client)


def report_doc(result: AnalysisResult, *, generated_at: str | None = None) -> dict[str, Any]:
    """The whole report, its growing arrays as :class:`LazyItems` (each item built when read)."""
    index = _RecordIndex(result.records)
    flows, captures = result.flows, result.captures
    cids = _CommunityIds(flows)
    doc: dict[str, Any] = {"format_version": FORMAT_VERSION, "tool": {"name": "fwdaudit", "version": __version__}}
    if generated_at is not None:
        doc["generated_at"] = generated_at
    doc.update({
        "captures": [_capture(c) for c in captures],
        "summary": _summary(result),
        "flows": LazyItems(flows, _flow),
        "records": LazyItems(result.records, _record),
        "findings": LazyItems(result.findings, lambda f: _finding(f, flows, captures, index, cids)),
        "chains": LazyItems(result.chains, _chain),
    })
    return doc


def report_data(result: AnalysisResult, *, generated_at: str | None = None) -> dict[str, Any]:
    """The whole report as plain JSON-able data, every array built (see :func:`report_doc`)."""
    return {k: list(v) if isinstance(v, LazyItems) else v
            for k, v in report_doc(result, generated_at=generated_at).items()}


#: top-level arrays that grow with the capture
BIG_ARRAYS = ("flows", "records", "findings", "chains")
#: top-level arrays written one item per line (the C encoder); other values are indented
LINE_ARRAYS = ("captures", *BIG_ARRAYS)


#: one encoder for every item (``json.dumps`` with options builds a new one per call); no indent: the C encoder
_ITEM_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False)


def _dump_item(value: Any) -> str:
    return _ITEM_ENCODER.encode(value)


class Sink(Protocol):
    """A consumer of the document's growing arrays, fed one item at a time by :func:`feed`."""

    def begin(self, section: str) -> None:
        """The array ``section`` (one of :data:`BIG_ARRAYS`, in that order) starts."""

    def item(self, section: str, index: int, item: dict[str, Any]) -> None:
        """Item ``index`` of ``section``."""

    def end(self, section: str) -> None:
        """The array ``section`` is complete."""

    def finish(self) -> None:
        """Every array was fed."""


def feed(doc: Mapping[str, Any], sinks: Sequence[Sink], reads: Sequence[frozenset[str]] | None = None) -> None:
    """Read each item of :data:`BIG_ARRAYS` once and hand it to every sink (one item in memory at a time).

    With ``reads`` (one set of section names per sink), a sink is given the items of those sections only
    (it still sees every section begin and end), and a section no sink reads is not built at all.
    """
    for section in BIG_ARRAYS:
        for s in sinks:
            s.begin(section)
        users = sinks if reads is None else [s for s, r in zip(sinks, reads, strict=True) if section in r]
        if users:
            for i, item in enumerate(doc[section]):
                for s in users:
                    s.item(section, i, item)
        for s in sinks:
            s.end(section)
    for s in sinks:
        s.finish()


class JsonSink:
    """Writes ``report.json`` as it is fed (layout: see :func:`iter_json`)."""

    def __init__(self, doc: Mapping[str, Any], write: Callable[[str], object]) -> None:
        self.doc = doc
        self.write = write
        self.keys = list(doc)
        self.done = 0  # keys written so far
        self.first = True

    def _sep(self) -> str:
        return ",\n" if self.done < len(self.keys) else "\n"

    def _plain(self, until: str | None) -> None:
        """Write the keys before ``until`` (all that are left when None) that are not yet written."""
        if self.done == 0:
            self.write("{\n")
        while self.done < len(self.keys) and self.keys[self.done] != until:
            key = self.keys[self.done]
            value = self.doc[key]
            self.done += 1
            if key in LINE_ARRAYS and isinstance(value, Sequence) and len(value):
                self.write(f" {json.dumps(key)}: [\n  " + ",\n  ".join(_dump_item(v) for v in value)
                           + "\n ]" + self._sep())
            else:
                text_value = json.dumps(value, indent=1, ensure_ascii=False, allow_nan=False).replace("\n", "\n ")
                self.write(f" {json.dumps(key)}: {text_value}{self._sep()}")

    def begin(self, section: str) -> None:
        self._plain(section)
        self.first = True

    def item(self, section: str, index: int, item: dict[str, Any]) -> None:
        if self.first:
            self.write(f" {json.dumps(section)}: [\n  ")
            self.first = False
        else:
            self.write(",\n  ")
        self.write(_dump_item(item))

    def end(self, section: str) -> None:
        self.done += 1
        if self.first:
            self.write(f" {json.dumps(section)}: []{self._sep()}")
        else:
            self.write("\n ]" + self._sep())

    def finish(self) -> None:
        self._plain(None)
        self.write("}\n")


def iter_json(data: Mapping[str, Any]) -> Iterator[str]:
    """Deterministic, valid UTF-8 JSON text in pieces: one line per item of :data:`LINE_ARRAYS`.

    The items are serialized by CPython's C encoder (``indent`` would force the pure-Python one,
    ~10x slower); only the small objects (``tool``, ``summary``) are indented. Items are read
    one at a time, so a lazy document (:func:`report_doc`) is never held whole.
    """
    buf: list[str] = []
    sink = JsonSink(data, buf.append)
    for section in BIG_ARRAYS:
        sink.begin(section)
        for i, item in enumerate(data[section]):
            sink.item(section, i, item)
            yield "".join(buf)
            buf.clear()
        sink.end(section)
    sink.finish()
    yield "".join(buf)


def dumps(data: Mapping[str, Any]) -> str:
    """Deterministic, valid UTF-8 JSON text."""
    return "".join(iter_json(data))


def load_schema() -> dict[str, Any]:
    """The JSON Schema of ``report.json`` (shipped as ``analyzer/report/schema.json``)."""
    from importlib import resources

    loaded: dict[str, Any] = json.loads(resources.files("analyzer.report").joinpath("schema.json").read_text("utf-8"))
    return loaded
