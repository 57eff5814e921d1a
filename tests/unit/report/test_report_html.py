"""report.html: attacker bytes render as inert, visible text; one hashed script; no external resource."""

from __future__ import annotations

import base64
import hashlib
from html.parser import HTMLParser

import jinja2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reportkit import PAYLOADS, analyzed, chain_of, finding, hostile_result, record_finding, with_extras

from analyzer.protocols.base import wire_text
from analyzer.report import data as data_mod
from analyzer.report.data import build_view, visible, visible_parts
from analyzer.report.html import content_security_policy, environment, render_html, wire
from analyzer.report.jsonout import report_data
from analyzer.rules.base import Severity

#: our own SVG vocabulary: any other element would have come from the data
ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h3", "h4", "p", "nav", "a", "main",
    "section", "div", "b", "span", "table", "thead", "tbody", "tr", "th", "td", "code", "ul", "li", "br", "label",
    "select", "option", "input", "button", "details", "summary", "dl", "dt", "dd", "pre", "figure", "figcaption",
    "svg", "defs", "marker", "path", "g", "rect", "text", "line", "circle", "script",
}


class _Page(HTMLParser):
    """Collects elements, attributes, script bodies and text of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self.text: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))
        if tag in ("script", "style"):
            self._in = tag

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "script":
            self.scripts.append(data)
        elif self._in == "style":
            self.styles.append(data)
        else:
            self.text.append(data)


def parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    page.close()
    return page


def sha256_source(body: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"


def assert_inert(html: str) -> _Page:
    """Everything an attacker could have slipped in is absent; returns the parsed page."""
    page = parse(html)
    tags = {t for t, _ in page.tags}
    assert tags <= ALLOWED_TAGS, tags - ALLOWED_TAGS
    assert [t for t, _ in page.tags].count("script") == 1 and len(page.scripts) == 1
    for tag, attrs in page.tags:
        for name, value in attrs:
            assert not name.startswith("on"), (tag, name, value)
            if name in ("href", "src", "xlink:href", "action", "formaction"):
                assert value is not None and value.startswith("#"), (tag, name, value)
    csp = next(v for t, a in page.tags if t == "meta" for k, v in a if k == "content" and v and "default-src" in v)
    assert csp is not None and "default-src 'none'" in csp
    assert f"script-src {sha256_source(page.scripts[0])};" in csp
    assert f"style-src {sha256_source(page.styles[0])};" in csp
    body = "".join(page.text)
    bad = [ch for ch in body if not ch.isprintable() and ch not in "\n"]
    assert not bad, [hex(ord(c)) for c in bad[:10]]
    assert "<link" not in html and "http-equiv=\"refresh\"" not in html
    return page


def test_xss_capture_renders_inert() -> None:
    html = render_html(report_data(analyzed("xss.pcapng")))
    page = assert_inert(html)
    body = "".join(page.text)
    assert "<script>window.__pwned=1</script>" in body  # shown as text ...
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html  # ... because it was escaped
    assert "invoice\\u202egpj.exe" in body and "\u202e" not in html
    assert "nul\\x00byte\\xff\\x01end" in body and "\x00" not in html
    assert 'caf\\xe9\\xff' in body
    assert "__pwned" not in page.scripts[0]


@pytest.mark.parametrize("value", PAYLOADS)
def test_every_payload_in_every_field_is_inert(value: str) -> None:
    html = render_html(report_data(hostile_result(value, value.encode("utf-8", "surrogateescape"))))
    assert_inert(html)


def test_visible_escapes() -> None:
    assert visible("ok <b>") == "ok <b>"
    assert visible("a\u202eb") == "a\\u202eb"
    assert visible("\x00\t\r\n\x7f") == "\\x00\\t\\r\\n\\x7f"
    assert visible(wire_text(b"\xff")) == "\\xff"
    assert visible("\u200b\ufeff\u2028\U000e0001") == "\\u200b\\ufeff\\u2028\\U000e0001"
    assert visible_parts("a\x00b") == [("a", False), ("\\x00", True), ("b", False)]


def test_wire_filter_marks_escapes_and_escapes_markup() -> None:
    out = str(wire("<i>\x00</i>"))
    assert out == '&lt;i&gt;<span class="esc">\\x00</span>&lt;/i&gt;'
    assert str(wire("a\nb", breaks=True)) == 'a<span class="esc">\\n</span>\nb'


def test_environment_is_strict_and_autoescapes() -> None:
    env = environment()
    assert env.undefined is jinja2.StrictUndefined
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("{{ nope.x }}").render()
    assert env.from_string("{{ x }}").render(x="<b>\u202e") == "&lt;b&gt;\\u202e"


def test_csp_allows_only_hashed_inline_code() -> None:
    csp = content_security_policy("body{}", "void 0;")
    assert csp.startswith("default-src 'none'; ")
    assert sha256_source("void 0;") in csp and sha256_source("body{}") in csp
    assert "unsafe" not in csp and "http" not in csp


def test_sections_and_view_model() -> None:
    from analyzer.model import Endpoint

    base = analyzed("sample.pcapng")
    recs = base.records
    chain_findings = [finding(flow=recs[1].flow, frames=recs[1].frames, severity=Severity.HIGH, rule="ttl.x")]
    res = with_extras(base, findings=chain_findings, keep=False,
                      chains=[chain_of(recs[:3], client=Endpoint("198.51.100.7", 51234), session_id="s1")])
    doc = report_data(res)
    view = build_view(doc)
    assert view.summary.findings == len(doc["findings"])
    assert dict(view.summary.findings_by_severity)["high"] >= 1
    assert view.summary.carriers.columns and sum(t for _, _, t in view.summary.carriers.rows) == 5
    chain = view.chains[-1]
    assert [n.role for n in chain.nodes] == ["claimed client", "proxy", "proxy", "proxy", "backend"]
    assert chain.nodes[0].dashed and chain.offending
    assert [e.offending for e in chain.edges] == [False, False, True, False]
    assert view.flows[recs[1].flow].worst == "high" and view.flows[recs[1].flow].findings >= 1
    assert not view.timeline.empty and len(view.timeline.marks) >= 5
    html = render_html(doc, view)
    page = assert_inert(html)
    ids = {v for _, a in page.tags for k, v in a if k == "id"}
    assert {"summary", "findings", "chains", "timeline", "records", "flows", "captures", "findings-table"} <= ids
    assert html.count('class="chain-svg"') == len(view.chains)
    assert html.count('<tbody class="row" id="finding-') == len(doc["findings"])
    assert "frame.number" in html and "Community ID" in html


def test_caps_keep_the_most_severe_and_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_mod, "MAX_FINDING_ROWS", 3)
    monkeypatch.setattr(data_mod, "MAX_FLOW_ROWS", 2)
    monkeypatch.setattr(data_mod, "MAX_RECORD_ROWS", 1)
    monkeypatch.setattr(data_mod, "MAX_CHAINS_DRAWN", 1)
    sevs = [Severity.INFO, Severity.LOW, Severity.HIGH, Severity.INFO, Severity.MEDIUM]
    recs = analyzed("sample.pcapng").records
    chains = [chain_of(recs[:2], chain_id=1), chain_of([], chain_id=2), chain_of(recs[2:], chain_id=3),
              chain_of(recs[1:2], chain_id=4)]
    res = with_extras(analyzed("sample.pcapng"), findings=[finding(severity=s, rule=f"r{i}")
                                                           for i, s in enumerate(sevs)], chains=chains, keep=False)
    doc = report_data(res)
    view = build_view(doc)
    assert [f.severity for f in view.findings] == ["high", "medium", "low"]
    assert view.findings_omitted == 2 and view.flows_omitted == 3 and view.records_omitted == 4
    html = render_html(doc, view)
    assert "Showing the 3 most severe findings; 2 more" in html
    assert "Showing the first 2 flows; 3 more" in html and "Showing the first 1 commands; 4 more" in html
    assert [c.id for c in view.chains] == [1] and view.chains_omitted == 2  # the chain without hops is not drawn
    assert "Drawing the first 1 chains; 2 more" in html


def test_timeline_is_bounded() -> None:
    base = analyzed("sample.pcapng")
    many = [finding(ts_ns=1_700_000_000_000_000_000 + i * 1_000_003, severity=Severity(10 * (1 + i % 4)))
            for i in range(5000)]
    view = build_view(report_data(with_extras(base, findings=many, keep=False)))
    assert len(view.timeline.marks) <= data_mod.TIMELINE_BINS * len(view.timeline.lanes)
    counts = [int(m.title.split()[0]) for m in view.timeline.marks if m.kind != "record"]
    assert sum(counts) == 5000 and max(counts) > 1


def test_empty_report_renders() -> None:
    res = with_extras(analyzed("tcp_in_order.pcapng"), findings=[], chains=[], keep=False)
    html = render_html(report_data(res))
    assert_inert(html)
    assert "No finding." in html and "No hop chain was found" in html


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(st.sampled_from(PAYLOADS), st.binary(max_size=40).map(wire_text), st.text(max_size=40)),
       raw=st.binary(max_size=64))
def test_any_bytes_render_inert(value: str, raw: bytes) -> None:
    html = render_html(report_data(hostile_result(value, raw, "tcp_in_order.pcapng")))
    html.encode("utf-8")
    page = parse(html)
    assert [t for t, _ in page.tags].count("script") == 1
    assert {t for t, _ in page.tags} <= ALLOWED_TAGS
    assert all(not k.startswith("on") for _, a in page.tags for k, _ in a)
    assert all(ch.isprintable() or ch == "\n" for ch in "".join(page.text))


def test_capture_path_is_escaped_everywhere() -> None:
    import dataclasses

    from analyzer.report import render_reports

    base = analyzed("sample.pcapng")
    path = wire_text(b"../<script>window.__pwned=1</script>\n\xff") + "\u202e.pcap"
    res = dataclasses.replace(base, captures=[dataclasses.replace(base.captures[0], path=path)])
    res = with_extras(res, findings=[finding()], keep=False)
    out = render_reports(res, ("html", "json", "jsonl", "csv"))
    assert_inert(out["report.html"])
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in out["report.html"]
    assert "\u202e" not in out["report.html"] and "\\u202e" in out["report.html"]
    import json

    doc = json.loads(out["report.json"])
    assert base64.b64decode(doc["captures"][0]["path_b64"]).decode("utf-8", "surrogateescape") == path
    assert doc["findings"][0]["capture_file"] == doc["captures"][0]["path"]
    assert "\u202e" not in out["flows.csv"] and "\u202e" not in out["findings.csv"]


def test_record_params_are_rendered_once_and_findings_link_to_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many findings on one record: its parameter table appears once (records section), each finding links
    to it; a record past the page's cap is named, not linked; the parameter cap is stated."""
    import dataclasses

    base = analyzed("sample.pcapng")
    rec = base.records[0]
    many_params = tuple((f"x-name-{k}", f"value-{k}") for k in range(30))
    big = dataclasses.replace(rec, params=many_params)
    records = [big, *base.records[1:]]
    res = with_extras(base, records=records, keep=False,
                      findings=[record_finding(big, rule=f"r{k}") for k in range(40)]
                      + [record_finding(base.records[-1], rule="r.last")])
    monkeypatch.setattr(data_mod, "MAX_PARAMS_SHOWN", 10)
    monkeypatch.setattr(data_mod, "MAX_RECORD_ROWS", len(records) - 1)
    doc = report_data(res)
    view = build_view(doc)
    html = render_html(doc, view)
    assert_inert(html)
    assert html.count("x-name-0<") == 1 and "x-name-10<" not in html  # once, and capped
    assert "the first 10 of 30 (all in report.json)" in html
    assert html.count('href="#record-0"') == 40 and html.count('id="record-0"') == 1
    last = len(records) - 1
    assert f'href="#record-{last}"' not in html and f"command #{last}: not listed on this page" in html
    assert [f.record_listed for f in view.findings].count(False) == 1
