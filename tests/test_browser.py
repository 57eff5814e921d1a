"""The HTML report in a real browser (headless Chromium through Playwright).

Opens the report of ``captures/xss.pcapng`` (every forwarded value is a payload that would set
``window.__pwned``), with extra synthetic findings so the findings table pages, and checks the
rendered page: rows, filters that hide rows, sorting, paging, the hop-chain SVG, no console
error, no network request, and that no injected script ran. A screenshot is kept in the test's
temporary directory.

Skipped (not failed) when Playwright (``pip install playwright``) or Debian's ``chromium`` is
missing; ``playwright install`` is never needed: the system Chromium is launched directly.

``FWDAUDIT_UPDATE_SCREENSHOT=1 pytest tests/test_browser.py`` also rewrites ``docs/report.png``
(the README's picture, from ``captures/sample.pcapng``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "unit" / "report"))
from reportkit import analyzed, chain_of, record_finding, validate, with_extras  # noqa: E402

from analyzer.config import Settings  # noqa: E402
from analyzer.model import Endpoint  # noqa: E402
from analyzer.pipeline import analyze  # noqa: E402
from analyzer.report import FORMATS, write_reports  # noqa: E402
from analyzer.rules.base import Severity  # noqa: E402

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGE_SIZE = 50  #: rows per page of the findings table (data-page-size in the template)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


class Opened:
    """A report page with everything it logged and requested."""

    def __init__(self, browser: Any, html: Path) -> None:
        self.url = html.resolve().as_uri()
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.requests: list[str] = []
        self.console: list[tuple[str, str]] = []
        self.context.on("request", lambda r: self.requests.append(r.url))
        self.page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.page.on("console", lambda m: self.console.append((m.type, m.text)))
        self.page.on("pageerror", lambda e: self.console.append(("pageerror", str(e))))
        self.page.goto(self.url)
        self.page.wait_for_load_state("load")

    def js(self, expr: str, arg: Any = None) -> Any:
        return self.page.evaluate(expr, arg)

    def visible_rows(self) -> list[dict[str, str]]:
        return self.js("""() => Array.from(document.querySelectorAll('#findings-table tbody.row'))
            .filter(tb => !tb.hidden).map(tb => ({sev: tb.dataset.sev, rule: tb.dataset.rule, idx: tb.dataset.idx}))""")


def xss_report(out: Path) -> dict[str, Any]:
    """Write every format for the XSS capture plus synthetic findings (enough to page) and a hostile chain."""
    res = analyzed("xss.pcapng")
    sevs = list(Severity)
    extra = [record_finding(rec, sevs[k % 4], rule=f"test.synthetic_{k % 3}", message=f"synthetic {k} <b>x</b>")
             for k, rec in enumerate(res.records * 12)]
    hostile_client = Endpoint('"><svg onload=window.__pwned=20>', 1)
    chain = chain_of(res.records[:3], chain_id=99, client=hostile_client, session_id="<script>window.__pwned=21</script>")
    res = with_extras(res, findings=extra, chains=[chain])
    write_reports(res, str(out), FORMATS)
    doc: dict[str, Any] = json.loads((out / "report.json").read_text("utf-8"))
    validate(doc)
    return doc


def test_xss_report_in_chromium(browser: Any, tmp_path: Path) -> None:
    doc = xss_report(tmp_path)
    opened = Opened(browser, tmp_path / "report.html")
    js = opened.js

    # nothing injected ran, nothing was fetched, nothing complained
    assert js("typeof window.__pwned") == "undefined"
    assert opened.requests == [opened.url]
    assert [c for c in opened.console if c[0] in ("error", "warning", "pageerror")] == []
    assert js("document.scripts.length") == 1
    assert js("document.querySelectorAll('img, iframe, object, embed, link, base, form').length") == 0
    assert js("document.querySelectorAll('[onerror], [onload], [onclick]').length") == 0

    # the findings table: every finding is a row, one page of them is shown
    n = len(doc["findings"])
    assert n > PAGE_SIZE
    assert js("document.querySelectorAll('#findings-table tbody.row').length") == n
    assert len(opened.visible_rows()) == PAGE_SIZE
    status = opened.page.locator('.pager[data-for="findings-table"] [data-status]')
    pages = -(-n // PAGE_SIZE)
    assert status.inner_text() == f"page 1 of {pages}"
    opened.page.click('.pager[data-for="findings-table"] [data-page="next"]')
    assert status.inner_text() == f"page 2 of {pages}"
    assert len(opened.visible_rows()) == min(PAGE_SIZE, n - PAGE_SIZE)

    # a severity filter hides the other rows
    n_info = sum(1 for f in doc["findings"] if f["severity"] == "info")
    opened.page.select_option('.controls[data-for="findings-table"] select[data-filter="sev"]', "info")
    shown = opened.visible_rows()
    assert shown and all(r["sev"] == "info" for r in shown) and len(shown) == min(PAGE_SIZE, n_info)
    assert js("document.querySelectorAll('#findings-table tbody.row[hidden]').length") == n - len(shown)
    opened.page.select_option('.controls[data-for="findings-table"] select[data-filter="sev"]', "")

    # a rule filter, then the search box
    opened.page.select_option('.controls[data-for="findings-table"] select[data-filter="rule"]', "test.synthetic_1")
    shown = opened.visible_rows()
    assert {r["rule"] for r in shown} == {"test.synthetic_1"}
    assert len(shown) == min(PAGE_SIZE, sum(1 for f in doc["findings"] if f["rule"] == "test.synthetic_1"))
    opened.page.select_option('.controls[data-for="findings-table"] select[data-filter="rule"]', "")
    opened.page.fill('.controls[data-for="findings-table"] input[data-search]', "window.__pwned=7")
    shown = opened.visible_rows()
    assert 0 < len(shown) < n
    opened.page.fill('.controls[data-for="findings-table"] input[data-search]', "")

    # sorting by rule puts the smallest rule name first
    opened.page.click('#findings-table th[data-key="rule"]')
    assert opened.visible_rows()[0]["rule"] == min(f["rule"] for f in doc["findings"])
    assert js("document.querySelector('#findings-table th[data-key=\"rule\"]').getAttribute('aria-sort')") \
        == "ascending"

    # sorting by time is exact to the nanosecond (beyond a double's precision)
    opened.page.click('#findings-table th[data-key="ts"]')
    ts = [int(t) for t in js("""() => Array.from(document.querySelectorAll('#findings-table tbody.row'))
        .filter(tb => !tb.hidden).map(tb => tb.dataset.ts)""")]
    assert ts == sorted(ts) and ts[0] == min(f["ts_ns"] or 0 for f in doc["findings"])

    # evidence opens; the copy button works or falls back without an error
    first = opened.page.locator("#findings-table tbody.row:not([hidden]) details").first
    first.locator("summary").click()
    assert first.locator("pre.hex").is_visible()
    copy = first.locator("button.copy")
    if copy.count():
        copy.click()
        opened.page.wait_for_function("b => b.textContent !== 'copy'", arg=copy.element_handle())

    # a finding links to its forwarding command (rendered once, in the records table): the link shows that
    # row even when a filter hid it, and opens its details (the command as sent, its parameters)
    row = opened.page.locator("#findings-table tbody.row:not([hidden])", has=opened.page.locator("a.record-link")).first
    row.locator("details").evaluate("d => { d.open = true; }")
    link = row.locator("a.record-link")
    target = (link.get_attribute("href") or "")[1:]
    assert target.startswith("record-")
    opened.page.fill('.controls[data-for="records-table"] input[data-search]', "no row has this text")
    assert js("id => document.getElementById(id).hidden", target) is True
    link.click()
    assert js("id => document.getElementById(id).hidden", target) is False
    assert js("id => document.getElementById(id).querySelector('details').open", target) is True
    assert opened.page.locator(f"#{target} pre.wire").first.is_visible()
    assert opened.page.locator(f"#{target} table.kvt").first.is_visible()

    # hop chains are drawn, with the offending hop marked; the payloads are text
    assert js("document.querySelectorAll('svg.chain-svg').length") == len(doc["chains"]) >= 1
    assert js("document.querySelectorAll('svg.chain-svg g.edge.offending').length") >= 1
    assert js("document.querySelectorAll('svg.timeline-svg circle').length") >= 1
    body = js("document.body.innerText")
    assert "<script>window.__pwned=1</script>" in body and "\\u202e" in body and "\u202e" not in body

    # still nothing ran after all the clicking
    assert js("typeof window.__pwned") == "undefined"
    assert opened.requests == [opened.url]
    assert [c for c in opened.console if c[0] in ("error", "warning", "pageerror")] == []
    shot = tmp_path / "report.png"
    opened.page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    opened.context.close()


def test_readme_screenshot(browser: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sample report renders cleanly; with FWDAUDIT_UPDATE_SCREENSHOT=1 it becomes docs/report.png."""
    monkeypatch.chdir(ROOT)  # the page shows the capture path as given: keep it short and machine-independent
    write_reports(analyze(["captures/sample.pcapng"], Settings()), str(tmp_path), ("html",))
    opened = Opened(browser, tmp_path / "report.html")
    assert [c for c in opened.console if c[0] in ("error", "warning", "pageerror")] == []
    assert opened.requests == [opened.url]
    target = ROOT / "docs" / "report.png" if os.environ.get("FWDAUDIT_UPDATE_SCREENSHOT") else tmp_path / "report.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    opened.page.set_viewport_size({"width": 1400, "height": 1600})
    opened.page.screenshot(path=str(target), full_page=False)
    assert target.stat().st_size > 10_000
    opened.context.close()
