"""The report's view model: everything the HTML page and the CSV files show, built before rendering.

Strategy: the JSON document (:func:`analyzer.report.jsonout.report_doc`) is the single
source of truth, read in ONE pass (:func:`analyzer.report.jsonout.feed`): its arrays may be
lazy, and a capture with 100,000 forwarding commands must not be held in memory. Before the
pass, :func:`digest` counts what needs every item (per-flow counts, the crosstabs, which
findings the page lists, the timeline bins) from light keys (``record_keys`` /
``finding_keys``: no item dict is built). During the pass :class:`ViewBuilder` keeps only the
rows the page lists (bounded, see below) and the CSV files (:mod:`analyzer.report.csvout`)
are written one row per item (:func:`finding_row`, :func:`record_row`, :func:`flow_row`).
Templates then only loop and print (coverage.py's ``HtmlDataGeneration`` / ``HtmlReporter``
split), and tests can assert on this view model without parsing HTML.

Bounds: the page lists at most :data:`MAX_FINDING_ROWS` findings (the most severe first),
:data:`MAX_RECORD_ROWS` records (each with at most :data:`MAX_PARAMS_SHOWN` parameters),
:data:`MAX_FLOW_ROWS` flows and draws :data:`MAX_CHAINS_DRAWN` chains; the timeline bins
events into :data:`TIMELINE_BINS` columns per lane, so its size does not grow with the
capture. A record's parameters are shown once, in the records section; a finding links to
its record instead of repeating them, so the page grows linearly with the input. Every cut
is counted and stated on the page.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from analyzer.report.jsonout import BIG_ARRAYS, SEVERITY_ORDER, finding_keys, iso_ns, record_keys

#: finding rows listed in the HTML page (the most severe first); report.json has all of them
MAX_FINDING_ROWS = 1000
#: forwarding-command rows listed in the HTML page
MAX_RECORD_ROWS = 2000
#: decoded parameters (and forward variables) shown per listed command; report.json has all of them
MAX_PARAMS_SHOWN = 100
#: reply lines shown per listed command
MAX_REPLY_LINES = 20
#: flow rows listed in the HTML page
MAX_FLOW_ROWS = 2000
#: hop chains drawn as pictures
MAX_CHAINS_DRAWN = 100
#: flows listed under "coverage gaps"
MAX_COVERAGE_FLOWS = 50
#: characters of one value shown in a table cell before it is clipped (the evidence shows more)
CELL_CHARS = 160
#: characters of one value shown in the evidence panel before it is clipped
EVIDENCE_CHARS = 2048
#: time bins of the timeline (per lane); a bin with events is one mark
TIMELINE_BINS = 160
#: bytes per line of the evidence hex dump (Wireshark's layout)
HEX_WIDTH = 16

SEVERITY_RANK = {label: len(SEVERITY_ORDER) - i for i, label in enumerate(SEVERITY_ORDER)}  #: high=4 ... info=1

#: Unicode bidirectional controls (Trojan Source, CVE-2021-42574); also caught by isprintable()
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


# ---------------------------------------------------------------------------- text helpers


def _escape_char(ch: str) -> str:
    o = ord(ch)
    if ch == "\t":
        return "\\t"
    if ch == "\n":
        return "\\n"
    if ch == "\r":
        return "\\r"
    if 0xDC80 <= o <= 0xDCFF:  # surrogateescape stand-in for a byte that was not UTF-8
        return f"\\x{o - 0xDC00:02x}"
    if o < 0x100:
        return f"\\x{o:02x}"
    if o <= 0xFFFF:
        return f"\\u{o:04x}"
    return f"\\U{o:08x}"


def visible_parts(value: str) -> list[tuple[str, bool]]:
    """Split text into (piece, is_escape) runs; invisible characters become escapes like ``\\u202e``.

    Escaped: C0/C1 controls, DEL, bidi and other format characters, line/paragraph separators,
    surrogates (bytes that were not UTF-8), private-use and unassigned code points: everything
    ``str.isprintable()`` rejects except the plain space.
    """
    if value.isprintable():
        return [(value, False)] if value else []
    parts: list[tuple[str, bool]] = []
    buf: list[str] = []
    for ch in value:
        if ch.isprintable():
            buf.append(ch)
            continue
        if buf:
            parts.append(("".join(buf), False))
            buf = []
        parts.append((_escape_char(ch), True))
    if buf:
        parts.append(("".join(buf), False))
    return parts


def visible(value: str) -> str:
    """Text with every invisible or control character shown as an escape (``\\x00``, ``\\u202e``)."""
    if value.isprintable():
        return value
    return "".join(p for p, _ in visible_parts(value))


def clip(value: str | None, limit: int = CELL_CHARS) -> str:
    """At most ``limit`` characters, with the number of the ones left out."""
    if value is None:
        return ""
    if len(value) <= limit:
        return value
    return value[:limit] + f"\u2026 (+{len(value) - limit} chars)"


def original(obj: Mapping[str, Any], key: str) -> Any:
    """``obj[key]``, or the exact wire text when the document escaped it (``key_b64`` present).

    The result may hold surrogate escapes for bytes that were not UTF-8: :func:`visible` shows
    them as ``\\xNN`` escapes (marked as escapes in the page, unlike the JSON's plain ``\\xNN``).
    """
    raw = obj.get(key + "_b64")
    if isinstance(raw, str):
        try:
            return base64.b64decode(raw, validate=True).decode("utf-8", "surrogateescape")
        except (ValueError, binascii.Error):
            pass
    return obj.get(key)


def original_pairs(obj: Mapping[str, Any], key: str) -> list[tuple[Any, Any]]:
    """``[name, value]`` pairs with the exact wire text where ``key_b64`` says it was escaped."""
    pairs = obj.get(key) or []
    raw = obj.get(key + "_b64")
    out: list[tuple[Any, Any]] = []
    for i, (n, v) in enumerate(pairs):
        if isinstance(raw, list) and i < len(raw):
            n = original({"x": n, "x_b64": raw[i][0]}, "x")
            v = original({"x": v, "x_b64": raw[i][1]}, "x")
        out.append((n, v))
    return out


def from_hex(hexstr: str) -> str:
    """Evidence bytes (hex in the document) as wire text (surrogate escapes for non-UTF-8 bytes)."""
    try:
        return bytes.fromhex(hexstr).decode("utf-8", "surrogateescape")
    except ValueError:
        return ""


def endpoint_text(ep: Mapping[str, Any] | None) -> str:
    """``ip:port`` (IPv6 in brackets), or an empty string."""
    if not ep:
        return ""
    ip = str(original(ep, "ip") or "")
    port = ep.get("port")
    host = f"[{ip}]" if ":" in ip else ip
    return host if port is None else f"{host}:{port}"


def frames_text(frames: Sequence[int], limit: int = 12) -> str:
    """``5, 6, 9`` (at most ``limit`` numbers, then ``+N``)."""
    shown = ", ".join(str(f) for f in frames[:limit])
    return shown + (f" +{len(frames) - limit}" if len(frames) > limit else "")


def hexdump(hexstr: str) -> tuple[str, ...]:
    """Wireshark-style lines: offset, 16 hex bytes, printable ASCII (others as ``.``)."""
    try:
        data = bytes.fromhex(hexstr)
    except ValueError:
        return ()
    lines = []
    for off in range(0, len(data), HEX_WIDTH):
        chunk = data[off : off + HEX_WIDTH]
        hx = chunk.hex(" ")
        asc = chunk.translate(_ASCII_SHOWN).decode("ascii")
        lines.append(f"{off:04x}  {hx:<{HEX_WIDTH * 3 - 1}}  {asc}")
    return tuple(lines)


#: byte -> itself when printable ASCII, else ``.`` (the hex dump's text column)
_ASCII_SHOWN = bytes(b if 0x20 <= b < 0x7F else 0x2E for b in range(256))


def _seconds(ns: int) -> str:
    """A duration for axis labels: ``0``, ``250 ms``, ``1.5 s``, ``3 min``, ``2.1 h``."""
    s = ns / 1e9
    if s == 0:
        return "0"
    if s < 1e-3:
        return f"{s * 1e6:.0f} \u00b5s"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    if s < 120:
        return f"{s:.3g} s"
    if s < 7200:
        return f"{s / 60:.3g} min"
    return f"{s / 3600:.3g} h"


# ---------------------------------------------------------------------------- view dataclasses


@dataclass(frozen=True, slots=True)
class CaptureRow:
    """One input file."""

    index: int  #: capture index (findings and flows refer to it)
    path: str
    error: str | None  #: why the file was unusable
    format: str
    packets: int
    bytes: int
    first_ts: str
    last_ts: str
    damage_count: int
    damage: tuple[str, ...]  #: first damage descriptions
    decode_issues: tuple[tuple[str, int], ...]  #: (code, count)


@dataclass(frozen=True, slots=True)
class CountTable:
    """A crosstab: one row per label, one count per column, and the row total."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, tuple[int, ...], int], ...]  #: (label, counts, total)


@dataclass(frozen=True, slots=True)
class CoverageItem:
    """One reason forwarding may have been missed, with how often it happened."""

    label: str
    count: int
    detail: str


@dataclass(frozen=True, slots=True)
class CoverageFlow:
    """A flow whose forwarding could not be seen completely."""

    flow: int
    protocol: str
    client: str
    server: str
    reason: str


@dataclass(frozen=True, slots=True)
class ReportSummary:
    """The numbers at the top of the page."""

    tool_version: str
    format_version: int
    generated_at: str | None  #: only with --timestamp
    first_ts: str | None
    last_ts: str | None
    duration: str | None
    captures: int
    unusable_captures: int
    packets: int
    flows: int
    records: int
    forwarding_records: int
    findings: int
    chains: int
    findings_by_severity: tuple[tuple[str, int], ...]  #: (label, count), high first, all four
    flows_by_protocol: tuple[tuple[str, int], ...]
    carriers: CountTable  #: forwarding commands: protocol x carrier
    rules: CountTable  #: findings: rule x severity
    coverage: tuple[CoverageItem, ...]
    coverage_flows: tuple[CoverageFlow, ...]
    coverage_flows_omitted: int


@dataclass(frozen=True, slots=True)
class FindingRow:
    """One finding as listed, with its evidence panel (only what the finding owns: bounded)."""

    index: int  #: position in report.json ``findings``
    severity: str
    severity_rank: int  #: 4 high ... 1 info (sort key)
    rule: str
    spec: str
    title: str
    message: str
    protocol: str
    flow: int | None
    flows: str  #: every flow involved, e.g. ``3, 7``
    capture: int | None
    capture_file: str
    frames: str
    wireshark_filter: str
    ts: str
    ts_ns: int  #: sort key (0 when unknown)
    stream: str  #: ``to_server 0-231``
    community_id: str
    excerpt: str  #: evidence bytes as text (``\\xNN`` for non-UTF-8), clipped
    hexdump: tuple[str, ...]
    facts: tuple[tuple[str, str], ...]
    record: int | None  #: the forwarding command the evidence is (report.json ``records`` index)
    record_listed: bool  #: that command is listed on the page (the finding links to it)


@dataclass(frozen=True, slots=True)
class RecordRow:
    """One forwarding command as listed, with its details (shown once here; findings link to it)."""

    index: int
    capture: int
    flow: int
    protocol: str
    carrier: str
    verb: str
    sender: str
    receiver: str
    frames: str
    ts: str
    ts_ns: int
    forwarding: bool
    forwarded_client: str
    forwarded_server: str
    ttl: str
    session_id: str
    forward: str
    reply: str
    accepted: str
    problems: str
    command: str  #: the command as sent (clipped)
    params: tuple[tuple[str, str], ...]  #: decoded parameters, at most MAX_PARAMS_SHOWN
    params_total: int  #: how many parameters the command had
    forward_vars: tuple[tuple[str, str], ...]  #: decoded forward variables, at most MAX_PARAMS_SHOWN
    forward_total: int  #: how many forward variables the command had
    reply_lines: tuple[str, ...]  #: the server's reply, one line each (code first), at most MAX_REPLY_LINES
    reply_frames: str


@dataclass(frozen=True, slots=True)
class FlowRow:
    """One TCP connection as listed (with its Community ID)."""

    id: int
    capture: int
    protocol: str
    client: str
    server: str
    community_id: str
    frames: str
    first_ts: str
    first_ts_ns: int
    packets: str
    bytes: str
    gaps: int
    tls: str
    ended: str
    records: int
    findings: int
    worst: str  #: worst finding severity on this flow, or ""


@dataclass(frozen=True, slots=True)
class ChainNode:
    """A host box of a hop-chain picture."""

    x: int
    y: int
    w: int
    h: int
    ip: str
    port: str
    role: str  #: "client", "proxy", "backend", or "claimed client" (only named by forwarding)
    dashed: bool


@dataclass(frozen=True, slots=True)
class ChainEdge:
    """An arrow between two hosts: one TCP connection (a hop)."""

    x1: int
    x2: int
    y: int
    label: str  #: protocol and carrier, e.g. ``imap ID``
    lines: tuple[str, ...]  #: forwarded client / server, TTL, session
    flow: int | None
    severity: str  #: worst finding on this hop's flow ("" if none)
    offending: bool  #: a finding above info points at this hop


@dataclass(frozen=True, slots=True)
class ChainView:
    """One hop chain, laid out for inline SVG."""

    id: int
    width: int
    height: int
    client: str
    session_id: str
    linked_by: str
    hops: int
    nodes: tuple[ChainNode, ...]
    edges: tuple[ChainEdge, ...]
    offending: bool
    description: str  #: text alternative for screen readers


@dataclass(frozen=True, slots=True)
class TimelineMark:
    """Events of one lane falling into one time bin."""

    x: float
    y: float
    r: float
    kind: str  #: css class: severity label, or "record"
    title: str


@dataclass(frozen=True, slots=True)
class Timeline:
    """Forwarding commands and findings over capture time, laid out for inline SVG."""

    width: int
    height: int
    left: int  #: x of the plot area's start
    right: int  #: x of the plot area's end
    lanes: tuple[tuple[float, str], ...]  #: (y, label)
    ticks: tuple[tuple[float, str], ...]  #: (x, label)
    marks: tuple[TimelineMark, ...]
    start: str  #: absolute time of x = left
    empty: bool


@dataclass(frozen=True, slots=True)
class FilterOptions:
    """Values offered by the findings filters."""

    severities: tuple[str, ...]
    rules: tuple[str, ...]
    protocols: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReportData:
    """Everything the HTML template reads."""

    summary: ReportSummary
    captures: tuple[CaptureRow, ...]
    findings: tuple[FindingRow, ...]
    findings_omitted: int
    filters: FilterOptions
    records: tuple[RecordRow, ...]
    records_omitted: int
    flows: tuple[FlowRow, ...]
    flows_omitted: int
    chains: tuple[ChainView, ...]
    chains_omitted: int
    timeline: Timeline


@dataclass(frozen=True, slots=True)
class Digest:
    """What needs every record and finding, counted from their light keys before the one pass."""

    records_by_flow: dict[int, int]
    forwarding_by_flow: dict[int, int]
    findings_by_flow: dict[int, int]
    worst_by_flow: dict[int, str]  #: worst finding severity per flow
    carriers: CountTable  #: forwarding commands: protocol x carrier
    rules: CountTable  #: findings: rule x severity
    shown_findings: tuple[int, ...]  #: finding indices the page lists, most severe first
    timeline: Timeline


# ---------------------------------------------------------------------------- table rows (CSV)

FINDING_COLUMNS = (
    "index", "severity", "rule", "spec", "title", "message", "capture", "capture_file", "flow", "flows",
    "protocol", "community_id", "frames", "wireshark_filter", "ts", "ts_ns", "direction", "stream_start",
    "stream_end", "record", "excerpt", "excerpt_hex", "facts",
)
RECORD_COLUMNS = (
    "index", "capture", "flow", "protocol", "carrier", "verb", "tag", "command_seq", "forwarding",
    "sender_ip", "sender_port", "receiver_ip", "receiver_port", "frames", "ts", "ts_ns", "stream_start",
    "stream_end", "line_len", "forwarded_client_ip", "forwarded_client_port", "forwarded_server_ip",
    "forwarded_server_port", "ttl", "ttl_raw", "session_id", "params", "forward", "forward_origin", "address",
    "reply_code", "reply_text", "reply_frames", "accepted", "trusted", "problems", "excerpt",
)
#: what reassembly dropped, per direction in report.json ``flows[*].dropped`` (summed in flows.csv)
DROPPED_KEYS = ("out_of_window_segments", "late_bytes", "after_fin_bytes")


def dropped_totals(f: Mapping[str, Any]) -> tuple[int, ...]:
    """A report.json flow's :data:`DROPPED_KEYS` counts, both directions summed."""
    d = f["dropped"]
    return tuple(d["to_server"][k] + d["to_client"][k] for k in DROPPED_KEYS)


FLOW_COLUMNS = (
    "id", "capture", "capture_file", "community_id", "protocol", "detected_by", "client_ip", "client_port",
    "server_ip", "server_port", "tls", "saw_syn", "first_frame", "last_frame", "first_ts", "last_ts",
    "first_ts_ns", "last_ts_ns", "packets_to_server", "packets_to_client", "bytes_to_server", "bytes_to_client",
    "gaps_to_server", "gap_bytes_to_server", "gaps_to_client", "gap_bytes_to_client", "retransmitted_bytes",
    "overlap_conflicts", *DROPPED_KEYS, "ended", "records",
    "forwarding_records", "findings", "worst_severity",
)


def _join(values: Iterable[object]) -> str:
    return " ".join(str(v) for v in values)


def _dump(value: object) -> str:
    """A nested value as compact JSON text (one cell)."""
    return _CELL_ENCODER.encode(value)


#: one encoder for every nested cell (``json.dumps`` with options builds a new one per call)
_CELL_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _ep_part(ep: Mapping[str, Any] | None, key: str) -> Any:
    return None if not ep else ep.get(key)


def finding_row(i: int, f: Mapping[str, Any]) -> tuple[Any, ...]:
    """The ``findings.csv`` row (:data:`FINDING_COLUMNS`) of report.json finding ``i``."""
    st = f["stream"] or {}
    return (
        i, f["severity"], f["rule"], f["spec"], f["title"], f["message"], f["capture"], f["capture_file"],
        f["flow"], _join(f["flows"]), f["protocol"], f["community_id"], _join(f["frames"]),
        f["wireshark_filter"], f["ts"], f["ts_ns"], st.get("direction"), st.get("start"), st.get("end"),
        f["record"], f["excerpt"], f["excerpt_hex"], _dump(f["facts"]),
    )


def record_row(i: int, r: Mapping[str, Any]) -> tuple[Any, ...]:
    """The ``records.csv`` row (:data:`RECORD_COLUMNS`) of report.json record ``i``."""
    reply = r["reply"] or {}
    return (
        i, r["capture"], r["flow"], r["protocol"], r["carrier"], r["verb"], r["tag"], r["command_seq"],
        r["forwarding"], _ep_part(r["sender"], "ip"), _ep_part(r["sender"], "port"),
        _ep_part(r["receiver"], "ip"), _ep_part(r["receiver"], "port"), _join(r["frames"]), r["ts"], r["ts_ns"],
        r["stream"]["start"], r["stream"]["end"], r["line_len"],
        _ep_part(r["forwarded_client"], "ip"), _ep_part(r["forwarded_client"], "port"),
        _ep_part(r["forwarded_server"], "ip"), _ep_part(r["forwarded_server"], "port"),
        r["ttl"], r["ttl_raw"], r["session_id"], _dump(r["params"]), _dump(r["forward"]), r["forward_origin"],
        r["address"], reply.get("code"), reply.get("text"), _join(reply.get("frames", ())), r["accepted"],
        r["trusted"], _dump(r["problems"]), r["excerpt"],
    )


def flow_row(f: Mapping[str, Any], digest: Digest, captures: Sequence[Mapping[str, Any]]) -> tuple[Any, ...]:
    """The ``flows.csv`` row (:data:`FLOW_COLUMNS`) of a report.json flow (counts from the digest)."""
    fid = f["id"]
    cap = f["capture"]
    path = captures[cap]["path"] if 0 <= cap < len(captures) else None
    gts, gtc = f["gaps"]["to_server"], f["gaps"]["to_client"]
    cl, sv = f["client"], f["server"]
    return (
        fid, cap, path, f["community_id"], f["protocol"], f["detected_by"], cl["ip"], cl["port"], sv["ip"],
        sv["port"], f["tls"], f["saw_syn"], f["first_frame"], f["last_frame"], f["first_ts"], f["last_ts"],
        f["first_ts_ns"], f["last_ts_ns"], f["packets"]["to_server"], f["packets"]["to_client"],
        f["bytes"]["to_server"], f["bytes"]["to_client"], gts["count"], gts["bytes"], gtc["count"], gtc["bytes"],
        f["retransmitted_bytes"], f["overlap_conflicts"], *dropped_totals(f), f["ended"],
        digest.records_by_flow.get(fid, 0),
        digest.forwarding_by_flow.get(fid, 0), digest.findings_by_flow.get(fid, 0), digest.worst_by_flow.get(fid),
    )


def _crosstab(counts: Counter[tuple[str, str]], columns: Sequence[str] | None = None) -> CountTable:
    """Counts of (row, column) pairs with row totals; ``columns`` fixes the column order (and keeps empty ones)."""
    per_row: dict[str, dict[str, int]] = {}
    for (label, column), n in counts.items():
        per_row.setdefault(label, {})[column] = n
    if not per_row:
        return CountTable(tuple(columns or ()), ())
    cols = list(columns) if columns is not None else sorted({c for per in per_row.values() for c in per})
    rows = tuple(
        (label, tuple(per.get(c, 0) for c in cols), sum(per.values())) for label, per in sorted(per_row.items())
    )
    return CountTable(tuple(cols), rows)


def digest(doc: Mapping[str, Any]) -> Digest:
    """Per-flow counts, crosstabs, the listed findings and the timeline, from the light keys of every item."""
    rec_count: Counter[int] = Counter()
    fwd_count: Counter[int] = Counter()
    carriers: Counter[tuple[str, str]] = Counter()
    for flow, protocol, carrier, forwarding, _ts in record_keys(doc):
        rec_count[flow] += 1
        if forwarding:
            fwd_count[flow] += 1
            carriers[(str(protocol) if protocol is not None else "-", str(carrier) if carrier is not None else "-")] += 1
    find_count: Counter[int] = Counter()
    worst_rank: dict[int, int] = {}
    rules: Counter[tuple[str, str]] = Counter()
    order: list[tuple[int, int]] = []  # (-rank, index) of the most severe findings: a bounded heap
    for i, (fflow, severity, rule, _ts, _rec) in enumerate(finding_keys(doc)):
        rank = SEVERITY_RANK.get(severity, 0)
        rules[(rule if rule is not None else "-", severity)] += 1
        if fflow is not None:
            find_count[fflow] += 1
            if rank > worst_rank.get(fflow, 0):
                worst_rank[fflow] = rank
        key = (rank, -i)
        if len(order) < MAX_FINDING_ROWS:
            heapq.heappush(order, key)
        elif key > order[0]:
            heapq.heapreplace(order, key)
    label_of_rank = {v: k for k, v in SEVERITY_RANK.items()}
    shown = tuple(-i for _rank, i in sorted(order, reverse=True))
    return Digest(
        records_by_flow=dict(rec_count), forwarding_by_flow=dict(fwd_count), findings_by_flow=dict(find_count),
        worst_by_flow={k: label_of_rank[v] for k, v in worst_rank.items()},
        carriers=_crosstab(carriers), rules=_crosstab(rules, SEVERITY_ORDER), shown_findings=shown,
        timeline=_timeline(doc),
    )


# ---------------------------------------------------------------------------- HTML view model


def _captures(doc: Mapping[str, Any]) -> tuple[CaptureRow, ...]:
    rows = []
    for i, c in enumerate(doc["captures"]):
        rows.append(CaptureRow(
            index=i, path=original(c, "path") or "", error=c["error"], format=str(c.get("format") or "")
            + (f" ({c['compression']})" if c.get("compression") else ""),
            packets=int(c.get("packets") or 0), bytes=int(c.get("bytes") or 0), first_ts=c.get("first_ts") or "",
            last_ts=c.get("last_ts") or "", damage_count=int(c.get("damage_count") or 0),
            damage=tuple(
                f"{d['code']} at byte {d['offset']}" + (f" (frame {d['frame']})" if d["frame"] else "")
                + f": {clip(d['detail'])}" for d in c.get("damage", ())[:20]
            ),
            decode_issues=tuple((str(k), int(v)) for k, v in c.get("decode_issues", {}).items()),
        ))
    return tuple(rows)


def _coverage_items(doc: Mapping[str, Any]) -> tuple[CoverageItem, ...]:
    cov = doc["summary"]["coverage"]
    return (
        CoverageItem("TLS from the first byte", cov["tls_implicit_flows"],
                     "encrypted flows: forwarding inside them cannot be seen"),
        CoverageItem("STARTTLS", cov["starttls_flows"], "flows that switched to TLS: later commands cannot be seen"),
        CoverageItem("reassembly gaps", cov["flows_with_gaps"],
                     f"flows with bytes missing from the capture ({cov['gap_bytes']} bytes in all)"),
        CoverageItem("conflicting retransmissions", cov["overlap_conflicts"],
                     "overlapping bytes that differed (the first copy was used)"),
        CoverageItem("dropped segments", cov["flows_with_dropped_segments"],
                     f"flows with segments outside the TCP window or after FIN that reassembly dropped "
                     f"({cov['out_of_window_segments']} out-of-window segments)"),
        CoverageItem("picked up mid-stream", cov["flows_without_syn"], "flows whose start was not captured"),
        CoverageItem("damaged captures", cov["damaged_captures"], "files with unreadable regions"),
        CoverageItem("decode issues", cov["decode_issues"], "frames that could not be decoded completely"),
        CoverageItem("unusable captures", cov["unusable_captures"], "files that could not be read at all"),
    )


def _coverage_reasons(f: Mapping[str, Any]) -> list[str]:
    """Why forwarding on this flow may not have been seen completely (empty: nothing hid it)."""
    reasons = []
    if f["tls"] == "implicit":
        reasons.append("TLS")
    elif f["tls"] == "starttls":
        reasons.append("STARTTLS")
    gaps = f["gaps"]["to_server"]["count"] + f["gaps"]["to_client"]["count"]
    if gaps:
        gap_bytes = f["gaps"]["to_server"]["bytes"] + f["gaps"]["to_client"]["bytes"]
        reasons.append(f"{gaps} gap(s), {gap_bytes} bytes missing")
    out_of_window, late, after_fin = dropped_totals(f)
    if out_of_window or late or after_fin:
        reasons.append(f"dropped: {out_of_window} out-of-window segment(s), {late} late and {after_fin} after-FIN bytes")
    return reasons


def _summary(doc: Mapping[str, Any], dg: Digest, coverage_flows: tuple[CoverageFlow, ...],
             omitted: int) -> ReportSummary:
    s = doc["summary"]
    span = s["time_span"]
    duration = None
    if span["first_ts_ns"] is not None and span["last_ts_ns"] is not None:
        duration = _seconds(span["last_ts_ns"] - span["first_ts_ns"])
    return ReportSummary(
        tool_version=str(doc["tool"]["version"]), format_version=int(doc["format_version"]),
        generated_at=doc.get("generated_at"), first_ts=span["first_ts"], last_ts=span["last_ts"], duration=duration,
        captures=s["captures"], unusable_captures=s["unusable_captures"], packets=s["packets"], flows=s["flows"],
        records=s["records"], forwarding_records=s["forwarding_records"], findings=s["findings"],
        chains=s["chains"],
        findings_by_severity=tuple((k, int(v)) for k, v in s["findings_by_severity"].items()),
        flows_by_protocol=tuple((k, int(v)) for k, v in s["flows_by_protocol"].items()),
        carriers=dg.carriers, rules=dg.rules,
        coverage=_coverage_items(doc), coverage_flows=coverage_flows, coverage_flows_omitted=omitted,
    )


def _pairs_text(pairs: Iterable[Sequence[Any]], limit: int = EVIDENCE_CHARS) -> tuple[tuple[str, str], ...]:
    return tuple((clip("" if n is None else str(n), limit), clip("NIL" if v is None else str(v), limit))
                 for n, v in pairs)


def _finding_row(i: int, f: Mapping[str, Any], record_listed: bool) -> FindingRow:
    st = f["stream"]
    facts_b64 = f.get("facts_b64", {})
    return FindingRow(
        index=i, severity=f["severity"], severity_rank=SEVERITY_RANK.get(f["severity"], 0), rule=f["rule"] or "",
        spec=f["spec"] or "", title=f["title"] or "", message=clip(original(f, "message"), EVIDENCE_CHARS),
        protocol=f["protocol"] or "", flow=f["flow"], flows=", ".join(str(x) for x in f["flows"]),
        capture=f["capture"], capture_file=f["capture_file"] or "", frames=frames_text(f["frames"]),
        wireshark_filter=f["wireshark_filter"] or "", ts=f["ts"] or "", ts_ns=f["ts_ns"] or 0,
        stream="" if st is None else f"{st['direction']} bytes {st['start']}\u2013{st['end']}",
        community_id=f["community_id"] or "", excerpt=clip(from_hex(f["excerpt_hex"]), EVIDENCE_CHARS),
        hexdump=hexdump(f["excerpt_hex"]),
        facts=tuple((k, clip(original({"v": v, "v_b64": facts_b64.get(k)}, "v"), EVIDENCE_CHARS))
                    for k, v in f["facts"].items()),
        record=f["record"], record_listed=record_listed,
    )


def _record_row(i: int, r: Mapping[str, Any]) -> RecordRow:
    reply = r["reply"]
    forward = original_pairs(r, "forward")
    fwd = "; ".join(f"{n}={v}" if n is not None else str(v) for n, v in forward)
    params = original_pairs(r, "params")
    reply_lines: tuple[str, ...] = ()
    reply_frames = ""
    if reply is not None:
        text_lines = str(original(reply, "text") or "").split("\n")
        reply_lines = tuple(clip(line, EVIDENCE_CHARS) for line in [f"{original(reply, 'code')} {text_lines[0]}",
                                                                    *text_lines[1:MAX_REPLY_LINES]])
        reply_frames = frames_text(reply["frames"])
    return RecordRow(
        index=i, capture=r["capture"], flow=r["flow"], protocol=r["protocol"], carrier=r["carrier"],
        verb=r["verb"], sender=endpoint_text(r["sender"]), receiver=endpoint_text(r["receiver"]),
        frames=frames_text(r["frames"]), ts=r["ts"] or "", ts_ns=r["ts_ns"] or 0, forwarding=bool(r["forwarding"]),
        forwarded_client=clip(endpoint_text(r["forwarded_client"]) or _raw_ep(r["forwarded_client_raw"])),
        forwarded_server=clip(endpoint_text(r["forwarded_server"]) or _raw_ep(r["forwarded_server_raw"])),
        ttl=clip(original(r, "ttl_raw") if r["ttl"] is None else str(r["ttl"])),
        session_id=clip(original(r, "session_id")), forward=clip(fwd),
        reply="" if reply is None else clip(f"{original(reply, 'code')} {original(reply, 'text')}"),
        accepted={True: "yes", False: "no", None: ""}[r["accepted"]], problems=clip("; ".join(r["problems"])),
        command=clip(from_hex(r["excerpt_hex"]), EVIDENCE_CHARS),
        params=_pairs_text(params[:MAX_PARAMS_SHOWN]), params_total=len(params),
        forward_vars=_pairs_text(forward[:MAX_PARAMS_SHOWN]), forward_total=len(forward),
        reply_lines=reply_lines, reply_frames=reply_frames,
    )


def _raw_ep(raw: Mapping[str, Any]) -> str:
    ip, port = original(raw, "ip"), original(raw, "port")
    if ip is None and port is None:
        return ""
    return f"{ip or '?'} port {port or '?'}"


def _flow_view_row(f: Mapping[str, Any], dg: Digest) -> FlowRow:
    fid = f["id"]
    gaps = f["gaps"]["to_server"]["count"] + f["gaps"]["to_client"]["count"]
    return FlowRow(
        id=int(fid), capture=int(f["capture"]), protocol=f["protocol"] or "tcp",
        client=endpoint_text(f["client"]), server=endpoint_text(f["server"]), community_id=f["community_id"],
        frames=f"{f['first_frame']}\u2013{f['last_frame']}", first_ts=f["first_ts"] or "",
        first_ts_ns=int(f["first_ts_ns"]),
        packets=f"{f['packets']['to_server']} / {f['packets']['to_client']}",
        bytes=f"{f['bytes']['to_server']} / {f['bytes']['to_client']}",
        gaps=int(gaps), tls=f["tls"] or "", ended=f["ended"], records=dg.records_by_flow.get(fid, 0),
        findings=dg.findings_by_flow.get(fid, 0), worst=dg.worst_by_flow.get(fid, ""),
    )


# chain picture geometry (SVG user units)
NODE_W = 190  #: host box width
NODE_H = 48  #: host box height
EDGE_W = 200  #: space between two boxes (the arrow and its labels)
CHAIN_PAD = 10
CHAIN_H = 150  #: picture height: labels above and below the arrows


def _chain_view(c: Mapping[str, Any], worst: Mapping[int, str]) -> ChainView:
    """One chain (with at least one hop) laid out as a picture."""
    hops = c["hops"]
    hosts: list[tuple[Mapping[str, Any] | None, str, bool]] = []  # (endpoint, role, dashed)
    first = hops[0]
    if first["record_index"] != -1 and c["client"] is not None:
        hosts.append((c["client"], "claimed client", True))  # the end client's connection was not captured
    hosts.append((first["sender"], "client" if first["record_index"] == -1 else "proxy", False))
    for h in hops:
        hosts.append((h["receiver"], "proxy", False))
    hosts[-1] = (hosts[-1][0], "backend", False)
    y = (CHAIN_H - NODE_H) // 2
    nodes = []
    for k, (ep, role, dashed) in enumerate(hosts):
        ip = str(original(ep or {}, "ip") or "?")
        port = (ep or {}).get("port")
        nodes.append(ChainNode(x=CHAIN_PAD + k * (NODE_W + EDGE_W), y=y, w=NODE_W, h=NODE_H,
                               ip=clip(ip, 30), port="" if port is None else f"port {port}", role=role,
                               dashed=dashed))
    edges = []
    offset = len(hosts) - 1 - len(hops)  # 1 when a claimed-client box comes first
    if offset:
        edges.append(ChainEdge(x1=nodes[0].x + NODE_W, x2=nodes[1].x, y=y + NODE_H // 2, label="(not captured)",
                               lines=("named by the forwarding",), flow=None, severity="", offending=False))
    for k, h in enumerate(hops):
        a, b = nodes[offset + k], nodes[offset + k + 1]
        lines = []
        if h["forwarded_client"] is not None:
            lines.append(clip("client " + endpoint_text(h["forwarded_client"]), 34))
        if h["forwarded_server"] is not None:
            lines.append(clip("server " + endpoint_text(h["forwarded_server"]), 34))
        if h["ttl"] is not None:
            lines.append(f"TTL {h['ttl']}")
        if h["record_index"] == -1:
            lines.append("no forwarding (end client)")
        sev = worst.get(h["flow"], "")
        label = " ".join(x for x in (h["protocol"], h["carrier"]) if x)
        edges.append(ChainEdge(x1=a.x + NODE_W, x2=b.x, y=y + NODE_H // 2, label=f"flow {h['flow']}: {label}",
                               lines=tuple(lines), flow=h["flow"], severity=sev,
                               offending=sev in ("high", "medium", "low")))
    width = nodes[-1].x + NODE_W + CHAIN_PAD
    desc = " -> ".join(
        f"{endpoint_text(ep) if ep else '?'} ({role})" for ep, role, _ in hosts
    )
    return ChainView(
        id=int(c["id"]), width=width, height=CHAIN_H, client=endpoint_text(c["client"]),
        session_id=clip(original(c, "session_id")), linked_by=", ".join(c["linked_by"]), hops=len(hops),
        nodes=tuple(nodes), edges=tuple(edges), offending=any(e.offending for e in edges),
        description=clip(desc, 600),
    )


# timeline geometry (SVG user units)
TL_WIDTH = 960
TL_LEFT = 150
TL_RIGHT = 940
TL_TOP = 14
TL_LANE = 26


def _events(doc: Mapping[str, Any]) -> Iterable[tuple[str, str, int]]:
    """(lane, kind, ts_ns) of every forwarding command and finding with a time, from the light keys."""
    for _flow, protocol, carrier, forwarding, ts in record_keys(doc):
        if forwarding and ts is not None:
            yield f"{protocol} {carrier}", "record", ts
    for _fflow, severity, _rule, fts, _rec in finding_keys(doc):
        if fts is not None:
            yield f"findings: {severity}", severity, fts


def _timeline(doc: Mapping[str, Any]) -> Timeline:
    """The timeline in two passes over the keys (time range, then bins): memory bounded by lanes x bins."""
    span = doc["summary"]["time_span"]
    t0: int | None = None
    t1: int | None = None
    lane_kind: dict[str, str] = {}
    for lane, kind, ts in _events(doc):
        t0 = ts if t0 is None or ts < t0 else t0
        t1 = ts if t1 is None or ts > t1 else t1
        lane_kind.setdefault(lane, kind)
    if t0 is None or t1 is None:
        return Timeline(TL_WIDTH, 60, TL_LEFT, TL_RIGHT, (), (), (), span["first_ts"] or "", True)
    start: int = t0 if span["first_ts_ns"] is None else min(t0, int(span["first_ts_ns"]))
    stop: int = t1 if span["last_ts_ns"] is None else max(t1, int(span["last_ts_ns"]))
    width_ns = max(stop - start, 1)
    record_lanes = sorted(lane for lane, kind in lane_kind.items() if kind == "record")
    sev_lanes = [f"findings: {s}" for s in SEVERITY_ORDER if f"findings: {s}" in lane_kind]
    lanes = record_lanes + sev_lanes
    lane_pos = {name: k for k, name in enumerate(lanes)}
    lane_y = {name: TL_TOP + TL_LANE * k + TL_LANE / 2 for k, name in enumerate(lanes)}
    plot_w = TL_RIGHT - TL_LEFT
    bins: dict[tuple[str, int], list[int]] = {}
    for lane, _kind, ts in _events(doc):
        b = min(TIMELINE_BINS - 1, (ts - start) * TIMELINE_BINS // width_ns)
        cell = bins.get((lane, b))
        if cell is None:
            bins[(lane, b)] = [1, ts, ts]
        else:
            cell[0] += 1
            cell[1] = min(cell[1], ts)
            cell[2] = max(cell[2], ts)
    marks = []
    for (lane, b), (n, lo, hi) in sorted(bins.items(), key=lambda kv: (lane_pos.get(kv[0][0], 0), kv[0][1])):
        x = TL_LEFT + (b + 0.5) * plot_w / TIMELINE_BINS
        r = min(9.0, 3.0 + 1.5 * math.log2(n))
        when = iso_ns(lo) or "?"
        if hi != lo:
            when += f" \u2013 +{_seconds(hi - lo)}"
        kind = lane_kind[lane]
        noun = "forwarding command" if kind == "record" else "finding"
        marks.append(TimelineMark(x=round(x, 1), y=lane_y[lane], r=round(r, 1), kind=kind,
                                  title=f"{n} {noun}{'s' if n != 1 else ''} ({lane}) at {when}"))
    height = int(TL_TOP + TL_LANE * len(lanes) + 30)
    ticks = tuple(
        (round(TL_LEFT + plot_w * k / 5, 1), "+" + _seconds(width_ns * k // 5)) for k in range(6)
    )
    return Timeline(TL_WIDTH, height, TL_LEFT, TL_RIGHT, tuple((lane_y[n], n) for n in lanes), ticks,
                    tuple(marks), iso_ns(start) or "", False)


def _filters(rows: Sequence[FindingRow]) -> FilterOptions:
    return FilterOptions(
        severities=tuple(s for s in SEVERITY_ORDER if any(r.severity == s for r in rows)),
        rules=tuple(sorted({r.rule for r in rows})),
        protocols=tuple(sorted({r.protocol for r in rows if r.protocol})),
    )


class ViewBuilder:
    """A :class:`analyzer.report.jsonout.Sink` that keeps only the rows the page lists (bounded)."""

    def __init__(self, doc: Mapping[str, Any], dg: Digest | None = None) -> None:
        self.doc = doc
        self.digest = dg if dg is not None else digest(doc)
        self.shown = {i: k for k, i in enumerate(self.digest.shown_findings)}  # index -> position on the page
        self.findings: dict[int, FindingRow] = {}
        self.records: list[RecordRow] = []
        self.flows: list[FlowRow] = []
        self.coverage_flows: list[CoverageFlow] = []
        self.coverage_total = 0
        self.chains: list[ChainView] = []
        self.drawable = 0

    def begin(self, section: str) -> None:
        """Nothing to prepare."""

    def item(self, section: str, index: int, item: dict[str, Any]) -> None:
        """Keep the row of ``item`` when the page lists it; count it otherwise."""
        if section == "flows":
            if len(self.flows) < MAX_FLOW_ROWS:
                self.flows.append(_flow_view_row(item, self.digest))
            reasons = _coverage_reasons(item)
            if reasons:
                self.coverage_total += 1
                if len(self.coverage_flows) < MAX_COVERAGE_FLOWS:
                    self.coverage_flows.append(CoverageFlow(
                        item["id"], item["protocol"] or "tcp", endpoint_text(item["client"]),
                        endpoint_text(item["server"]), "; ".join(reasons)))
        elif section == "records":
            if index < MAX_RECORD_ROWS:
                self.records.append(_record_row(index, item))
        elif section == "findings":
            if index in self.shown:
                rec = item["record"]
                listed = rec is not None and 0 <= rec < min(MAX_RECORD_ROWS, len(self.doc["records"]))
                self.findings[index] = _finding_row(index, item, listed)
        elif section == "chains" and item["hops"]:
            self.drawable += 1
            if len(self.chains) < MAX_CHAINS_DRAWN:
                self.chains.append(_chain_view(item, self.digest.worst_by_flow))

    def end(self, section: str) -> None:
        """Nothing to close."""

    def finish(self) -> None:
        """Nothing to close."""

    def view(self) -> ReportData:
        """The view model of everything fed so far."""
        findings = tuple(self.findings[i] for i in self.digest.shown_findings if i in self.findings)
        n_findings = len(self.doc["findings"])
        n_records = len(self.doc["records"])
        n_flows = len(self.doc["flows"])
        coverage_flows = tuple(self.coverage_flows)
        return ReportData(
            summary=_summary(self.doc, self.digest, coverage_flows, self.coverage_total - len(coverage_flows)),
            captures=_captures(self.doc), findings=findings, findings_omitted=n_findings - len(findings),
            filters=_filters(findings), records=tuple(self.records), records_omitted=n_records - len(self.records),
            flows=tuple(self.flows), flows_omitted=n_flows - len(self.flows), chains=tuple(self.chains),
            chains_omitted=self.drawable - len(self.chains), timeline=self.digest.timeline,
        )


def build_view(doc: Mapping[str, Any]) -> ReportData:
    """The HTML view model of a report document (one pass over its arrays)."""
    builder = ViewBuilder(doc)
    for section in BIG_ARRAYS:
        for i, item in enumerate(doc[section]):
            builder.item(section, i, item)
    return builder.view()
