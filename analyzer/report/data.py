"""The report's view model: everything the HTML page and the CSV files show, built before rendering.

Strategy: the JSON document (:func:`analyzer.report.jsonout.report_data`) is the single
source of truth. This module turns it into (1) pandas DataFrames, one flat row per finding,
record and flow (``findings.csv``/``records.csv``/``flows.csv`` are written from them, and the
summary tables are crosstabs of them), and (2) small frozen view dataclasses for the HTML
template: rows already formatted and clipped, chain pictures and the timeline already laid
out in SVG coordinates. Templates then only loop and print (coverage.py's
``HtmlDataGeneration`` / ``HtmlReporter`` split), and tests can assert on this view model
without parsing HTML.

Bounds: the page lists at most :data:`MAX_FINDING_ROWS` findings (the most severe first),
:data:`MAX_RECORD_ROWS` records, :data:`MAX_FLOW_ROWS` flows and draws :data:`MAX_CHAINS_DRAWN`
chains; the timeline bins events into :data:`TIMELINE_BINS` columns per lane, so its size does
not grow with the capture. Every cut is counted and stated on the page.

pandas is imported inside functions only: the parsers and their tests never pay for it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from analyzer.report.jsonout import SEVERITY_ORDER, iso_ns

if TYPE_CHECKING:
    import pandas as pd  # type: ignore[import-untyped, unused-ignore]

#: finding rows listed in the HTML page (the most severe first); report.json has all of them
MAX_FINDING_ROWS = 1000
#: forwarding-command rows listed in the HTML page
MAX_RECORD_ROWS = 2000
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
        hx = " ".join(f"{b:02x}" for b in chunk)
        asc = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(f"{off:04x}  {hx:<{HEX_WIDTH * 3 - 1}}  {asc}")
    return tuple(lines)


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
    """One finding as listed, with its evidence panel."""

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
    excerpt: str  #: evidence bytes as text (``\\xNN`` for non-UTF-8)
    hexdump: tuple[str, ...]
    facts: tuple[tuple[str, str], ...]
    command: str  #: the forwarding command as sent (when the evidence is a record and differs from excerpt)
    params: tuple[tuple[str, str], ...]  #: decoded parameters of that command
    forward: tuple[tuple[str, str], ...]  #: decoded forward variables (x-forward-*, FORWARD=, XRCPTFORWARD)
    reply: tuple[str, ...]  #: the server's reply, one line each (code first)
    reply_frames: str


@dataclass(frozen=True, slots=True)
class RecordRow:
    """One forwarding command as listed."""

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
class ReportFrames:
    """The flat tables (one row per finding / record / flow) behind the CSV files and the crosstabs."""

    findings: pd.DataFrame
    records: pd.DataFrame
    flows: pd.DataFrame


# ---------------------------------------------------------------------------- DataFrames

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
FLOW_COLUMNS = (
    "id", "capture", "capture_file", "community_id", "protocol", "detected_by", "client_ip", "client_port",
    "server_ip", "server_port", "tls", "saw_syn", "first_frame", "last_frame", "first_ts", "last_ts",
    "first_ts_ns", "last_ts_ns", "packets_to_server", "packets_to_client", "bytes_to_server", "bytes_to_client",
    "gaps_to_server", "gap_bytes_to_server", "gaps_to_client", "gap_bytes_to_client", "retransmitted_bytes",
    "overlap_conflicts", "out_of_window_segments", "late_bytes", "after_fin_bytes", "ended", "records",
    "forwarding_records", "findings", "worst_severity",
)


def _join(values: Iterable[object]) -> str:
    return " ".join(str(v) for v in values)


def _dump(value: object) -> str:
    """A nested value as compact JSON text (one cell)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _ep_part(ep: Mapping[str, Any] | None, key: str) -> Any:
    return None if not ep else ep.get(key)


def build_frames(doc: Mapping[str, Any]) -> ReportFrames:
    """One flat DataFrame per table of the report (columns: ``*_COLUMNS``)."""
    import pandas as pd  # type: ignore[import-untyped, unused-ignore]

    captures = doc["captures"]
    frows = []
    for i, f in enumerate(doc["findings"]):
        st = f["stream"] or {}
        frows.append((
            i, f["severity"], f["rule"], f["spec"], f["title"], f["message"], f["capture"], f["capture_file"],
            f["flow"], _join(f["flows"]), f["protocol"], f["community_id"], _join(f["frames"]),
            f["wireshark_filter"], f["ts"], f["ts_ns"], st.get("direction"), st.get("start"), st.get("end"),
            f["record"], f["excerpt"], f["excerpt_hex"], _dump(f["facts"]),
        ))
    rrows = []
    for i, r in enumerate(doc["records"]):
        reply = r["reply"] or {}
        rrows.append((
            i, r["capture"], r["flow"], r["protocol"], r["carrier"], r["verb"], r["tag"], r["command_seq"],
            r["forwarding"], _ep_part(r["sender"], "ip"), _ep_part(r["sender"], "port"),
            _ep_part(r["receiver"], "ip"), _ep_part(r["receiver"], "port"), _join(r["frames"]), r["ts"], r["ts_ns"],
            r["stream"]["start"], r["stream"]["end"], r["line_len"],
            _ep_part(r["forwarded_client"], "ip"), _ep_part(r["forwarded_client"], "port"),
            _ep_part(r["forwarded_server"], "ip"), _ep_part(r["forwarded_server"], "port"),
            r["ttl"], r["ttl_raw"], r["session_id"], _dump(r["params"]), _dump(r["forward"]), r["forward_origin"],
            r["address"], reply.get("code"), reply.get("text"), _join(reply.get("frames", ())), r["accepted"],
            r["trusted"], _dump(r["problems"]), r["excerpt"],
        ))
    # dtype=object keeps the values as they are in the document (None stays None, ints stay ints)
    findings = pd.DataFrame(frows, columns=list(FINDING_COLUMNS), dtype=object)
    records = pd.DataFrame(rrows, columns=list(RECORD_COLUMNS), dtype=object)
    # per-flow counts (pandas groupby), joined onto the flow rows through plain dicts (fast per-row lookups)
    rec_count: dict[int, int] = {}
    fwd_count: dict[int, int] = {}
    find_count: dict[int, int] = {}
    worst_rank: dict[int, int] = {}
    if len(records):
        rec_count = {int(k): int(v) for k, v in records.groupby("flow").size().items()}
        fwd = records[records["forwarding"] == True]  # noqa: E712  (object column: compare, not truth-test)
        fwd_count = {int(k): int(v) for k, v in fwd.groupby("flow").size().items()}
    with_flow = findings[findings["flow"].notna()] if len(findings) else findings
    if len(with_flow):
        ranked = with_flow.assign(rank=with_flow["severity"].map(SEVERITY_RANK).fillna(0))
        find_count = {int(k): int(v) for k, v in ranked.groupby("flow").size().items()}
        worst_rank = {int(k): int(v) for k, v in ranked.groupby("flow")["rank"].max().items()}
    label_of_rank = {v: k for k, v in SEVERITY_RANK.items()}
    wrows = []
    for f in doc["flows"]:
        fid = f["id"]
        cap = f["capture"]
        path = captures[cap]["path"] if 0 <= cap < len(captures) else None
        gts, gtc = f["gaps"]["to_server"], f["gaps"]["to_client"]
        drs, drc = f["dropped"]["to_server"], f["dropped"]["to_client"]
        cl, sv = f["client"], f["server"]
        wrows.append((
            fid, cap, path, f["community_id"], f["protocol"], f["detected_by"], cl["ip"], cl["port"], sv["ip"],
            sv["port"], f["tls"], f["saw_syn"], f["first_frame"], f["last_frame"], f["first_ts"], f["last_ts"],
            f["first_ts_ns"], f["last_ts_ns"], f["packets"]["to_server"], f["packets"]["to_client"],
            f["bytes"]["to_server"], f["bytes"]["to_client"], gts["count"], gts["bytes"], gtc["count"], gtc["bytes"],
            f["retransmitted_bytes"], f["overlap_conflicts"],
            drs["out_of_window_segments"] + drc["out_of_window_segments"], drs["late_bytes"] + drc["late_bytes"],
            drs["after_fin_bytes"] + drc["after_fin_bytes"], f["ended"], rec_count.get(fid, 0),
            fwd_count.get(fid, 0), find_count.get(fid, 0), label_of_rank.get(worst_rank.get(fid, 0)),
        ))
    flows = pd.DataFrame(wrows, columns=list(FLOW_COLUMNS), dtype=object)
    return ReportFrames(findings=findings, records=records, flows=flows)


def _crosstab(df: pd.DataFrame, row: str, col: str, columns: Sequence[str] | None = None) -> CountTable:
    """Counts of ``row`` x ``col`` with totals; ``columns`` fixes the column order (and keeps empty ones)."""
    if not len(df):
        return CountTable(tuple(columns or ()), ())
    keys = df[[row, col]].fillna("-").astype(str)
    sizes = keys.groupby([row, col], sort=True).size()  # a Series indexed by (row, col)
    counts: dict[str, dict[str, int]] = {}
    for (label, column), n in sizes.items():
        counts.setdefault(str(label), {})[str(column)] = int(n)
    cols = list(columns) if columns is not None else sorted({c for per in counts.values() for c in per})
    rows = tuple(
        (label, tuple(per.get(c, 0) for c in cols), sum(per.values())) for label, per in sorted(counts.items())
    )
    return CountTable(tuple(cols), rows)


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


def _coverage(doc: Mapping[str, Any]) -> tuple[tuple[CoverageItem, ...], tuple[CoverageFlow, ...], int]:
    cov = doc["summary"]["coverage"]
    items = (
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
    flows: list[CoverageFlow] = []
    total = 0
    for f in doc["flows"]:
        reasons = []
        if f["tls"] == "implicit":
            reasons.append("TLS")
        elif f["tls"] == "starttls":
            reasons.append("STARTTLS")
        gaps = f["gaps"]["to_server"]["count"] + f["gaps"]["to_client"]["count"]
        if gaps:
            gap_bytes = f["gaps"]["to_server"]["bytes"] + f["gaps"]["to_client"]["bytes"]
            reasons.append(f"{gaps} gap(s), {gap_bytes} bytes missing")
        dropped = {k: f["dropped"]["to_server"][k] + f["dropped"]["to_client"][k]
                   for k in ("out_of_window_segments", "late_bytes", "after_fin_bytes")}
        if any(dropped.values()):
            reasons.append(f"dropped: {dropped['out_of_window_segments']} out-of-window segment(s), "
                           f"{dropped['late_bytes']} late and {dropped['after_fin_bytes']} after-FIN bytes")
        if not reasons:
            continue
        total += 1
        if len(flows) < MAX_COVERAGE_FLOWS:
            flows.append(CoverageFlow(f["id"], f["protocol"] or "tcp", endpoint_text(f["client"]),
                                      endpoint_text(f["server"]), "; ".join(reasons)))
    return items, tuple(flows), total - len(flows)


def _summary(doc: Mapping[str, Any], frames: ReportFrames) -> ReportSummary:
    s = doc["summary"]
    span = s["time_span"]
    duration = None
    if span["first_ts_ns"] is not None and span["last_ts_ns"] is not None:
        duration = _seconds(span["last_ts_ns"] - span["first_ts_ns"])
    fwd = frames.records[frames.records["forwarding"] == True] if len(frames.records) else frames.records  # noqa: E712
    coverage, coverage_flows, omitted = _coverage(doc)
    return ReportSummary(
        tool_version=str(doc["tool"]["version"]), format_version=int(doc["format_version"]),
        generated_at=doc.get("generated_at"), first_ts=span["first_ts"], last_ts=span["last_ts"], duration=duration,
        captures=s["captures"], unusable_captures=s["unusable_captures"], packets=s["packets"], flows=s["flows"],
        records=s["records"], forwarding_records=s["forwarding_records"], findings=s["findings"],
        chains=s["chains"],
        findings_by_severity=tuple((k, int(v)) for k, v in s["findings_by_severity"].items()),
        flows_by_protocol=tuple((k, int(v)) for k, v in s["flows_by_protocol"].items()),
        carriers=_crosstab(fwd, "protocol", "carrier"),
        rules=_crosstab(frames.findings, "rule", "severity", SEVERITY_ORDER),
        coverage=coverage, coverage_flows=coverage_flows, coverage_flows_omitted=omitted,
    )


def _pairs_text(pairs: Iterable[Sequence[Any]], limit: int = EVIDENCE_CHARS) -> tuple[tuple[str, str], ...]:
    return tuple((clip("" if n is None else str(n), limit), clip("NIL" if v is None else str(v), limit))
                 for n, v in pairs)


def _finding_rows(doc: Mapping[str, Any]) -> tuple[tuple[FindingRow, ...], int]:
    findings = doc["findings"]
    order = sorted(range(len(findings)), key=lambda i: (-SEVERITY_RANK.get(findings[i]["severity"], 0), i))
    shown = order[:MAX_FINDING_ROWS]
    records = doc["records"]
    rows = []
    for i in shown:
        f = findings[i]
        rec = records[f["record"]] if f["record"] is not None and 0 <= f["record"] < len(records) else None
        command = ""
        params: tuple[tuple[str, str], ...] = ()
        forward: tuple[tuple[str, str], ...] = ()
        reply: tuple[str, ...] = ()
        reply_frames = ""
        if rec is not None:
            if rec["excerpt_hex"] != f["excerpt_hex"]:
                command = clip(from_hex(rec["excerpt_hex"]), EVIDENCE_CHARS)
            params = _pairs_text(original_pairs(rec, "params"))
            forward = _pairs_text(original_pairs(rec, "forward"))
            if rec["reply"] is not None:
                rp = rec["reply"]
                text_lines = str(original(rp, "text") or "").split("\n")
                reply = tuple(clip(line, EVIDENCE_CHARS) for line in [f"{rp['code']} {text_lines[0]}",
                                                                      *text_lines[1:20]])
                reply_frames = frames_text(rp["frames"])
        st = f["stream"]
        rows.append(FindingRow(
            index=i, severity=f["severity"], severity_rank=SEVERITY_RANK.get(f["severity"], 0), rule=f["rule"] or "",
            spec=f["spec"] or "", title=f["title"] or "", message=clip(original(f, "message"), EVIDENCE_CHARS),
            protocol=f["protocol"] or "", flow=f["flow"], flows=", ".join(str(x) for x in f["flows"]),
            capture=f["capture"], capture_file=f["capture_file"] or "", frames=frames_text(f["frames"]),
            wireshark_filter=f["wireshark_filter"] or "", ts=f["ts"] or "", ts_ns=f["ts_ns"] or 0,
            stream="" if st is None else f"{st['direction']} bytes {st['start']}\u2013{st['end']}",
            community_id=f["community_id"] or "", excerpt=from_hex(f["excerpt_hex"]), hexdump=hexdump(f["excerpt_hex"]),
            facts=tuple((k, clip(original({"v": v, "v_b64": f.get("facts_b64", {}).get(k)}, "v"), EVIDENCE_CHARS))
                        for k, v in f["facts"].items()),
            command=command, params=params, forward=forward, reply=reply, reply_frames=reply_frames,
        ))
    return tuple(rows), len(findings) - len(rows)


def _record_rows(doc: Mapping[str, Any]) -> tuple[tuple[RecordRow, ...], int]:
    records = doc["records"]
    rows = []
    for i, r in enumerate(records[:MAX_RECORD_ROWS]):
        reply = r["reply"]
        fwd = "; ".join(f"{n}={v}" if n is not None else str(v) for n, v in original_pairs(r, "forward"))
        rows.append(RecordRow(
            index=i, capture=r["capture"], flow=r["flow"], protocol=r["protocol"], carrier=r["carrier"],
            verb=r["verb"], sender=endpoint_text(r["sender"]), receiver=endpoint_text(r["receiver"]),
            frames=frames_text(r["frames"]), ts=r["ts"] or "", ts_ns=r["ts_ns"] or 0, forwarding=bool(r["forwarding"]),
            forwarded_client=clip(endpoint_text(r["forwarded_client"]) or _raw_ep(r["forwarded_client_raw"])),
            forwarded_server=clip(endpoint_text(r["forwarded_server"]) or _raw_ep(r["forwarded_server_raw"])),
            ttl=clip(original(r, "ttl_raw") if r["ttl"] is None else str(r["ttl"])),
            session_id=clip(original(r, "session_id")), forward=clip(fwd),
            reply="" if reply is None else clip(f"{original(reply, 'code')} {original(reply, 'text')}"),
            accepted={True: "yes", False: "no", None: ""}[r["accepted"]], problems=clip("; ".join(r["problems"])),
        ))
    return tuple(rows), len(records) - len(rows)


def _raw_ep(raw: Mapping[str, Any]) -> str:
    ip, port = original(raw, "ip"), original(raw, "port")
    if ip is None and port is None:
        return ""
    return f"{ip or '?'} port {port or '?'}"


def _flow_rows(frames: ReportFrames) -> tuple[tuple[FlowRow, ...], int]:
    df = frames.flows
    rows = []
    for t in df.head(MAX_FLOW_ROWS).itertuples(index=False):
        gaps = int(t.gaps_to_server) + int(t.gaps_to_client)
        rows.append(FlowRow(
            id=int(t.id), capture=int(t.capture), protocol=t.protocol or "tcp",
            client=endpoint_text({"ip": t.client_ip, "port": t.client_port}),
            server=endpoint_text({"ip": t.server_ip, "port": t.server_port}), community_id=t.community_id,
            frames=f"{t.first_frame}\u2013{t.last_frame}", first_ts=t.first_ts or "",
            first_ts_ns=int(t.first_ts_ns),
            packets=f"{t.packets_to_server} / {t.packets_to_client}",
            bytes=f"{t.bytes_to_server} / {t.bytes_to_client}",
            gaps=gaps, tls=t.tls or "", ended=t.ended, records=int(t.records), findings=int(t.findings),
            worst=t.worst_severity or "",
        ))
    return tuple(rows), len(df) - len(rows)


# chain picture geometry (SVG user units)
NODE_W = 190  #: host box width
NODE_H = 48  #: host box height
EDGE_W = 200  #: space between two boxes (the arrow and its labels)
CHAIN_PAD = 10
CHAIN_H = 150  #: picture height: labels above and below the arrows


def _worst_by_flow(doc: Mapping[str, Any]) -> dict[int, str]:
    worst: dict[int, str] = {}
    for f in doc["findings"]:
        fl = f["flow"]
        if fl is None:
            continue
        if SEVERITY_RANK.get(f["severity"], 0) > SEVERITY_RANK.get(worst.get(fl, ""), 0):
            worst[fl] = f["severity"]
    return worst


def _chain_views(doc: Mapping[str, Any]) -> tuple[tuple[ChainView, ...], int]:
    worst = _worst_by_flow(doc)
    views = []
    drawable = [c for c in doc["chains"] if c["hops"]]
    for c in drawable[:MAX_CHAINS_DRAWN]:
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
        views.append(ChainView(
            id=int(c["id"]), width=width, height=CHAIN_H, client=endpoint_text(c["client"]),
            session_id=clip(original(c, "session_id")), linked_by=", ".join(c["linked_by"]), hops=len(hops),
            nodes=tuple(nodes), edges=tuple(edges), offending=any(e.offending for e in edges),
            description=clip(desc, 600),
        ))
    return tuple(views), len(drawable) - len(views)


# timeline geometry (SVG user units)
TL_WIDTH = 960
TL_LEFT = 150
TL_RIGHT = 940
TL_TOP = 14
TL_LANE = 26


def _timeline(doc: Mapping[str, Any]) -> Timeline:
    events: list[tuple[str, str, int]] = []  # (lane, kind, ts_ns)
    for r in doc["records"]:
        if r["forwarding"] and r["ts_ns"] is not None:
            events.append((f"{r['protocol']} {r['carrier']}", "record", r["ts_ns"]))
    for f in doc["findings"]:
        if f["ts_ns"] is not None:
            events.append((f"findings: {f['severity']}", f["severity"], f["ts_ns"]))
    span = doc["summary"]["time_span"]
    if not events:
        return Timeline(TL_WIDTH, 60, TL_LEFT, TL_RIGHT, (), (), (), span["first_ts"] or "", True)
    t0 = min(e[2] for e in events)
    t1 = max(e[2] for e in events)
    if span["first_ts_ns"] is not None:
        t0 = min(t0, span["first_ts_ns"])
    if span["last_ts_ns"] is not None:
        t1 = max(t1, span["last_ts_ns"])
    width_ns = max(t1 - t0, 1)
    record_lanes = sorted({e[0] for e in events if e[1] == "record"})
    sev_lanes = [f"findings: {s}" for s in SEVERITY_ORDER if any(e[0] == f"findings: {s}" for e in events)]
    lanes = record_lanes + sev_lanes
    lane_y = {name: TL_TOP + TL_LANE * k + TL_LANE / 2 for k, name in enumerate(lanes)}
    plot_w = TL_RIGHT - TL_LEFT
    bins: dict[tuple[str, int], list[int]] = {}
    kinds: dict[str, str] = {}
    for lane, kind, ts in events:
        b = min(TIMELINE_BINS - 1, (ts - t0) * TIMELINE_BINS // width_ns)
        cell = bins.setdefault((lane, b), [0, ts, ts])
        cell[0] += 1
        cell[1] = min(cell[1], ts)
        cell[2] = max(cell[2], ts)
        kinds[lane] = kind
    marks = []
    for (lane, b), (n, lo, hi) in sorted(bins.items(), key=lambda kv: (lanes.index(kv[0][0]), kv[0][1])):
        x = TL_LEFT + (b + 0.5) * plot_w / TIMELINE_BINS
        r = min(9.0, 3.0 + 1.5 * math.log2(n))
        when = iso_ns(lo) or "?"
        if hi != lo:
            when += f" \u2013 +{_seconds(hi - lo)}"
        noun = "forwarding command" if kinds[lane] == "record" else "finding"
        marks.append(TimelineMark(x=round(x, 1), y=lane_y[lane], r=round(r, 1), kind=kinds[lane],
                                  title=f"{n} {noun}{'s' if n != 1 else ''} ({lane}) at {when}"))
    height = int(TL_TOP + TL_LANE * len(lanes) + 30)
    ticks = tuple(
        (round(TL_LEFT + plot_w * k / 5, 1), "+" + _seconds(width_ns * k // 5)) for k in range(6)
    )
    return Timeline(TL_WIDTH, height, TL_LEFT, TL_RIGHT, tuple((lane_y[n], n) for n in lanes), ticks,
                    tuple(marks), iso_ns(t0) or "", False)


def _filters(rows: Sequence[FindingRow]) -> FilterOptions:
    return FilterOptions(
        severities=tuple(s for s in SEVERITY_ORDER if any(r.severity == s for r in rows)),
        rules=tuple(sorted({r.rule for r in rows})),
        protocols=tuple(sorted({r.protocol for r in rows if r.protocol})),
    )


def build_view(doc: Mapping[str, Any], frames: ReportFrames | None = None) -> ReportData:
    """The HTML view model of a report document (``frames`` from :func:`build_frames`, built if not given)."""
    if frames is None:
        frames = build_frames(doc)
    findings, findings_omitted = _finding_rows(doc)
    records, records_omitted = _record_rows(doc)
    flows, flows_omitted = _flow_rows(frames)
    chains, chains_omitted = _chain_views(doc)
    return ReportData(
        summary=_summary(doc, frames), captures=_captures(doc), findings=findings,
        findings_omitted=findings_omitted, filters=_filters(findings), records=records,
        records_omitted=records_omitted, flows=flows, flows_omitted=flows_omitted, chains=chains,
        chains_omitted=chains_omitted, timeline=_timeline(doc),
    )
