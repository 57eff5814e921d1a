"""``report.html``: one self-contained page (inline CSS and script, no external resource).

Strategy: the page is rendered from the view model of :mod:`analyzer.report.data`; the
template only loops and prints. Every string from a capture is attacker-controlled, so
three layers keep it inert:

1. jinja2 autoescaping (``select_autoescape``) and ``StrictUndefined``;
2. a ``finalize`` hook that runs every printed string through
   :func:`analyzer.report.data.visible`, so control characters, bidi overrides (U+202E),
   NULs and bytes that were not UTF-8 appear as visible escapes (``\\u202e``) and can
   neither hide nor reorder text; the ``wire`` filter does the same and marks each escape;
3. a Content-Security-Policy that allows exactly one script and one style sheet, named by
   their SHA-256 hashes, and nothing else (no network, no plugin, no inline handler): even
   markup that slipped through could not run.

The CSS and the script are static package files, so their hashes are the same in every
report and the output stays byte-for-byte reproducible.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any

from analyzer.report.data import ReportData, ReportFrames, build_view, visible, visible_parts

if TYPE_CHECKING:
    import jinja2
    import markupsafe

TEMPLATE = "report.html"
STYLE_FILE = "templates/report.css"
SCRIPT_FILE = "templates/report.js.html"  #: JavaScript; ``.html`` so that package-data (templates/*.html) ships it


def csp_source_hash(text: str) -> str:
    """A CSP hash source for an inline element's exact text: ``'sha256-<base64>'``."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


@functools.lru_cache(maxsize=1)
def assets() -> tuple[str, str]:
    """(css, script) text of the page, read from the package."""
    base = resources.files("analyzer.report")
    css = base.joinpath(STYLE_FILE).read_text("utf-8")
    script = base.joinpath(SCRIPT_FILE).read_text("utf-8")
    for name, body, end in (("css", css, "</style"), ("script", script, "</script")):
        if end in body.lower():
            raise ValueError(f"report {name} must not contain {end}")
    return css, script


def content_security_policy(css: str, script: str) -> str:
    """The page's policy: only its own inline script and style, nothing from anywhere else."""
    return (
        f"default-src 'none'; script-src {csp_source_hash(script)}; style-src {csp_source_hash(css)}; "
        "img-src 'none'; font-src 'none'; connect-src 'none'; object-src 'none'; base-uri 'none'; "
        "form-action 'none'"
    )


def _finalize(value: object) -> object:
    """Applied to every ``{{ ... }}``: invisible characters become escapes; None prints as nothing."""
    import markupsafe

    if value is None:
        return ""
    if isinstance(value, markupsafe.Markup):
        return value
    if isinstance(value, str):
        return visible(value)
    return value


def wire(value: object, breaks: bool = False) -> markupsafe.Markup:
    """Escaped text with each invisible character shown as a marked escape (``<span class="esc">\\x00</span>``);
    with ``breaks``, a line break follows each ``\\n`` escape."""
    import markupsafe

    OPEN_ESC, CLOSE_ESC = markupsafe.Markup('<span class="esc">'), markupsafe.Markup("</span>")  # noqa: N806
    text = "" if value is None else str(value)
    out = []
    for piece, is_escape in visible_parts(text):
        if is_escape:
            out.append(OPEN_ESC + markupsafe.escape(piece) + CLOSE_ESC)
            if breaks and piece == "\\n":
                out.append(markupsafe.Markup("\n"))
        else:
            out.append(markupsafe.escape(piece))
    return markupsafe.Markup("").join(out)


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The jinja2 environment: package templates, autoescape, StrictUndefined, visible-escape finalize."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("analyzer", "report/templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        finalize=_finalize,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["wire"] = wire
    return env


def render_html(doc: Mapping[str, Any], view: ReportData | None = None, frames: ReportFrames | None = None) -> str:
    """Render a report document (see :func:`analyzer.report.jsonout.report_data`) as one HTML page."""
    if view is None:
        view = build_view(doc, frames)
    css, script = assets()
    import markupsafe

    return environment().get_template(TEMPLATE).render(
        v=view,
        csp=content_security_policy(css, script),
        css=markupsafe.Markup(css),
        script=markupsafe.Markup(script),
    )
