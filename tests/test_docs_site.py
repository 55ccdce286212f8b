"""The built documentation site renders as meant: every table a table, docstring examples as
code blocks, Sphinx roles turned into links or code (never shown raw).

Builds the site with ``mkdocs build --strict`` into a temporary folder (the docs extra:
``pip install -e ".[docs]"``) and reads the HTML.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|exc|obj):")
TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$", re.M)
INLINE = {"a", "abbr", "b", "code", "em", "i", "kbd", "small", "span", "strong", "sub", "sup"}


class _Text(HTMLParser):
    """The text of a page, split into what is inside <pre> blocks and what is not."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth = 0
        self.outside: list[str] = []
        self.inside: list[str] = []
        self.tables = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._break(tag)
        self.depth += tag == "pre"
        self.tables += tag == "table"

    def handle_endtag(self, tag: str) -> None:
        self.depth -= tag == "pre" and self.depth > 0
        self._break(tag)

    def _break(self, tag: str) -> None:
        if tag not in INLINE:  # block elements start new lines of text
            (self.inside if self.depth else self.outside).append("\n")

    def handle_data(self, data: str) -> None:
        (self.inside if self.depth else self.outside).append(data)


def read(html: str) -> _Text:
    parser = _Text()
    parser.feed(html)
    return parser


def problems(html: str) -> list[str]:
    """What renders wrongly in one page: raw table rows, raw roles, doctest lines outside code."""
    page = read(html)
    text = "".join(page.outside)
    found = [f"raw table row {row.strip()!r}" for row in TABLE_ROW.findall(text)]
    found += [f"raw role near {text[max(0, m.start() - 30):m.end() + 30]!r}"
              for m in ROLE.finditer(text)]
    found += [f"doctest line outside a code block near {text[max(0, i - 10):i + 60]!r}"
              for i in [m.start() for m in re.finditer(">>>", text)]]
    return found


def test_the_checks_catch_what_they_look_for() -> None:
    bad = ("<p>| a | b |\n| --- | --- |</p><p>What :class:<code>X</code> returns.</p>"
           "<p>&gt;&gt;&gt; f = X()</p>")
    assert len(problems(bad)) == 4  # two table rows, one role, one doctest line
    good = "<table><tr><td>a</td></tr></table><pre><code>&gt;&gt;&gt; f = X()\n| a |</code></pre>"
    assert problems(good) == [] and read(good).tables == 1


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                        "--site-dir", str(out)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _pages(site: Path) -> list[Path]:
    return sorted(p for p in site.rglob("index.html") if "search" not in p.parts)


@pytest.mark.slow  # builds the whole site (about 10 s)
def test_no_page_shows_raw_markup(site: Path) -> None:
    pages = _pages(site)
    assert len(pages) >= 20
    found = {str(p.relative_to(site)): problems(p.read_text()) for p in pages}
    assert not {k: v for k, v in found.items() if v}


@pytest.mark.slow
def test_every_markdown_table_is_a_table(site: Path) -> None:
    for md in sorted((ROOT / "docs").glob("*.md")):
        text = re.sub(r"^```.*?^```", "", md.read_text(), flags=re.M | re.S)  # not in code blocks
        separators = re.findall(r"^\|?\s*:?-{3,}:?\s*\|", text, flags=re.M)
        html = site / ("" if md.stem == "index" else md.stem) / "index.html"
        assert read(html.read_text()).tables == len(separators), md.name


@pytest.mark.slow
def test_api_pages_show_examples_as_code_and_roles_as_links(site: Path) -> None:
    html = (site / "api" / "fusion" / "index.html").read_text()
    page = read(html)
    code = "".join(page.inside)
    assert '>>> f = AttentionFusion({"image": 8, "text": 4}, out_dim=6)' in code
    assert re.search(r'<a [^>]*href="#mmfuse\.fusion\.AttentionFusionOutput"[^>]*>'
                     r"<code>AttentionFusionOutput</code></a>", html)
    # every API page's docstring examples are in code blocks
    for api in sorted((site / "api").glob("*/index.html")):
        page = read(api.read_text())
        assert ">>>" not in "".join(page.outside), api
    examples = sum("".join(read(p.read_text()).inside).count(">>> ")
                   for p in (site / "api").glob("*/index.html"))
    assert examples >= 50
