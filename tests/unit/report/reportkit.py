"""Shared helpers of the report tests: analysis results to render, hostile values, schema validation.

Findings and chains are built here by hand (``Finding`` objects, and duck-typed ``Chain``/``Hop``
look-alikes), so the report tests do not depend on which rules exist or what they find.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from analyzer.config import Settings
from analyzer.forwarding.model import ForwardingRecord, ForwardVar, ParamDetail, Reply
from analyzer.model import Endpoint
from analyzer.pipeline import AnalysisResult, analyze
from analyzer.protocols.base import wire_text
from analyzer.rules.base import Finding, Severity

ROOT = Path(__file__).resolve().parents[3]
CAPTURES = ROOT / "captures"

#: what a hostile peer puts into values: markup, script URLs, template syntax, bidi, NUL, non-UTF-8, formulas
PAYLOADS: tuple[str, ...] = (
    "<script>window.__pwned=1</script>",
    '"><img src=x onerror="window.__pwned=2">',
    "'><svg onload=window.__pwned=3>",
    "javascript:window.__pwned=4",
    "</textarea></style></script><b>x",
    "{{7*7}}{% raw %}${7*7}",
    "invoice\u202egpj.exe",
    "a\x00b\x01c\x1bd\x7f",
    wire_text(b"caf\xe9\xff\xfe"),
    "=HYPERLINK(\"http://203.0.113.9\",\"x\")",
    "+1+2", "-3+4", "@SUM(1)", "\t=1", "\r=1",
    "\u2028\u2029\ufeff\u200b",
    "\\x41 is not an escape",
)


@functools.lru_cache(maxsize=None)
def analyzed(name: str) -> AnalysisResult:
    """The pipeline's result for ``captures/<name>`` (cached; the path is recorded as absolute)."""
    return analyze([str(CAPTURES / name)], Settings())


@dataclasses.dataclass(frozen=True, slots=True)
class FakeHop:
    """Duck-typed ``analyzer.rules.chains.Hop``."""

    flow: int
    capture: int
    record_index: int
    sender: Endpoint
    receiver: Endpoint
    forwarded_client: Endpoint | None
    forwarded_server: Endpoint | None
    ttl: int | None
    session_id: str | None
    ts_ns: int
    protocol: str
    carrier: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class FakeChain:
    """Duck-typed ``analyzer.rules.chains.Chain``."""

    id: int
    hops: tuple[FakeHop, ...]
    client: Endpoint | None
    session_id: str | None
    linked_by: tuple[str, ...]


def finding(rule: str = "test.synthetic", severity: Severity = Severity.HIGH, *, flow: int | None = 0,
            flows: tuple[int, ...] | None = None, capture: int | None = 0, frames: tuple[int, ...] = (4,),
            ts_ns: int | None = 1_700_000_000_000_000_000, stream: tuple[str, int, int] | None = ("to_server", 0, 10),
            excerpt: bytes = b"A1 ID NIL\r\n", message: str = "a synthetic finding",
            facts: tuple[tuple[str, str], ...] = (("limit", "30"),), title: str = "Synthetic finding") -> Finding:
    """A finding with sane defaults (every field can be overridden)."""
    return Finding(rule=rule, spec="A-X1", severity=severity, title=title, message=message, flow=flow,
                   flows=flows if flows is not None else (() if flow is None else (flow,)), capture=capture,
                   frames=frames, ts_ns=ts_ns, stream=stream, excerpt=excerpt, facts=facts)


def record_finding(rec: ForwardingRecord, severity: Severity = Severity.HIGH, rule: str = "test.on_record",
                   message: str = "finding on a record") -> Finding:
    """A finding whose evidence is the record's command (as ``RuleContext.record_finding`` makes them)."""
    return finding(rule=rule, severity=severity, flow=rec.flow, capture=rec.capture, frames=rec.frames,
                   ts_ns=rec.ts_ns, stream=("to_server", rec.stream_start, rec.stream_end), excerpt=rec.excerpt,
                   message=message)


def chain_of(records: Sequence[ForwardingRecord], chain_id: int = 0, client: Endpoint | None = None,
             session_id: str | None = None) -> FakeChain:
    """A chain whose hops are the given records' connections, in order."""
    hops = tuple(
        FakeHop(flow=r.flow, capture=r.capture, record_index=i, sender=r.sender, receiver=r.receiver,
                forwarded_client=r.forwarded_client, forwarded_server=r.forwarded_server, ttl=r.ttl,
                session_id=r.session_id, ts_ns=r.ts_ns, protocol=r.protocol, carrier=r.carrier)
        for i, r in enumerate(records)
    )
    return FakeChain(id=chain_id, hops=hops, client=client, session_id=session_id, linked_by=("session_id",))


def with_extras(result: AnalysisResult, *, records: Sequence[ForwardingRecord] | None = None,
                findings: Sequence[Finding] = (), chains: Sequence[Any] = (), keep: bool = True) -> AnalysisResult:
    """A copy of ``result`` with records replaced and findings/chains added (or, ``keep=False``, replaced)."""
    return dataclasses.replace(
        result,
        records=list(records) if records is not None else list(result.records),
        findings=(list(result.findings) if keep else []) + list(findings),
        chains=(list(result.chains) if keep else []) + list(chains),
    )


def hostile_record(base: ForwardingRecord, value: str, raw: bytes) -> ForwardingRecord:
    """``base`` with ``value`` (wire text) in every text field and ``raw`` as the command bytes."""
    detail = ParamDetail(name=value, value=value, raw=value, lenient=value, form="quoted", name_octets=1,
                         value_octets=1, name_wire=1, value_wire=1, literal_waited=None, problems=(value,))
    return dataclasses.replace(
        base, tag=value, params=((value, value), ("x-originating-ip", value), (value, None)),
        details=(detail,), forwarded_client=Endpoint(value, 1), forwarded_client_raw=(value, value),
        forwarded_server_raw=(value, None), ttl=None, ttl_raw=value, session_id=value,
        forward=(ForwardVar(value, value, "x-forward"), ForwardVar(None, value, "FORWARD")), problems=(value,),
        reply=Reply(code=value, text=value + "\n" + value, frames=(9,), ts_ns=base.ts_ns + 1), address=value,
        excerpt=raw,
    )


def hostile_result(value: str, raw: bytes, capture: str = "sample.pcapng") -> AnalysisResult:
    """A capture's result with hostile values in its first record, two findings and a chain."""
    base = analyzed(capture)
    recs = list(base.records)
    recs[0] = hostile_record(recs[0], value, raw)
    fnd = finding(message=value, facts=((value, value), ("n", value)), excerpt=raw, title=value, rule=value,
                  flow=recs[0].flow, frames=recs[0].frames)
    chain = chain_of(recs[:2], client=Endpoint(value, 2), session_id=value)
    return with_extras(base, records=recs, findings=[fnd, record_finding(recs[0])], chains=[chain])


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema

    from analyzer.report.jsonout import load_schema

    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def validate(doc_or_text: dict[str, Any] | str) -> None:
    """Assert a report (dict, or report.json text) matches the shipped JSON Schema."""
    doc = json.loads(doc_or_text) if isinstance(doc_or_text, str) else doc_or_text
    errors = sorted(_validator().iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message[:300]}" for e in errors[:10])
