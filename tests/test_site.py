"""The course site (``helpers.site``): static pages of the executed notebooks that open offline in any browser.

Built from small executed notebooks made here (a formula, a matplotlib figure, a DataFrame table) and, when
``build/teaching/`` holds executed notebooks (``make notebooks``), from the real ones too. The browser checks drive
Debian's headless Chromium through selenium (``make browser`` installs it) with every host name unresolvable, so a
page that needs the internet fails them.
"""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pytest

import helpers.site as site
from helpers.paths import REPO_ROOT

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
TEACHING = REPO_ROOT / "build" / "teaching"

# ---------------------------------------------------------------------------------------------- fixtures


def _png() -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5), dpi=50)
    ax.plot([0, 1, 2], [0, 1, 4])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _executed(markdown: str, with_table: bool) -> nbformat.NotebookNode:
    """A notebook as papermill leaves it: a markdown cell, a code cell with text, figure and (optionally) table."""
    import pandas as pd

    v4 = nbformat.v4
    outputs = [v4.new_output("stream", name="stdout", text="hello\n"),
               v4.new_output("display_data", data={"image/png": _png(), "text/plain": "<Figure>"})]
    if with_table:
        table = pd.DataFrame({"detector": ["mcm", "knn"], "auroc": [0.91, 0.87]})
        outputs.append(v4.new_output("execute_result", execution_count=1,
                                     data={"text/html": table.to_html(), "text/plain": str(table)}))
    nb = v4.new_notebook(cells=[v4.new_markdown_cell(markdown),
                                v4.new_code_cell("plot()", execution_count=1, outputs=outputs)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


ALPHA = r"""# 01 · Alpha: a *formula* and a figure

**Learning goals.** After this notebook you can
1. read $e^{i\pi} + 1 = 0$;
2. see a figure.

The series goes on in [notebook 02](02_beta.ipynb).

$$\mathrm{MCM}(x) = \max_k \frac{e^{s_k/T}}{\sum_j e^{s_j/T}}$$
"""
BETA = "# 02 · Beta\n\nBack to [notebook 01](../notebooks/01_alpha.ipynb).\n"


@pytest.fixture(scope="module")
def synthetic_site(tmp_path_factory):
    """Two executed notebooks and a third one that only exists as a source notebook."""
    root = tmp_path_factory.mktemp("synthetic")
    executed, sources = root / "executed", root / "notebooks"
    executed.mkdir()
    sources.mkdir()
    nbformat.write(_executed(ALPHA, with_table=True), executed / "01_alpha.ipynb")
    nbformat.write(_executed(BETA, with_table=False), executed / "02_beta.ipynb")
    for stem in ("01_alpha", "02_beta", "03_gamma"):
        nbformat.write(nbformat.v4.new_notebook(), sources / f"{stem}.ipynb")
    return site.build_site("smoke", root / "site", executed_dir=executed, notebook_dir=sources), executed


@pytest.fixture(scope="module")
def teaching_site(tmp_path_factory):
    if not list(TEACHING.glob("[0-9][0-9]_*.ipynb")):
        pytest.skip(f"no executed notebooks in {TEACHING}: `make notebooks` executes them (then the real site is "
                    "checked too)")
    return site.build_site("teaching", tmp_path_factory.mktemp("teaching") / "site"), TEACHING


@pytest.fixture(params=["synthetic_site", "teaching_site"])
def any_site(request):
    return request.getfixturevalue(request.param)


# ---------------------------------------------------------------------------------------------- static checks


class _Refs(HTMLParser):
    """Every URL a page loads (scripts, styles, images, frames, CSS ``url()``) and every link it offers."""

    def __init__(self):
        super().__init__()
        self.loads, self.links, self._style = [], [], False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "img", "iframe", "source", "embed", "audio", "video") and a.get("src"):
            self.loads.append(a["src"])
        if tag == "link" and a.get("href"):
            self.loads.append(a["href"])
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if a.get("style"):
            self._css(a["style"])
        self._style = tag == "style"

    def handle_endtag(self, tag):
        self._style = False

    def handle_data(self, data):
        if self._style:
            self._css(data)

    def _css(self, css: str):
        self.loads += re.findall(r"url\(\s*['\"]?([^'\")]+)", css)
        self.loads += re.findall(r"@import\s+['\"]([^'\"]+)", css)


def _refs(page: Path) -> _Refs:
    parser = _Refs()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def _local(url: str) -> bool:
    parts = urlsplit(url)
    return not parts.scheme and not parts.netloc and not url.startswith(("#", "mailto:"))


def test_pages_load_nothing_from_the_internet(any_site):
    out, _ = any_site
    pages = sorted(out.glob("*.html"))
    assert out / "index.html" in pages
    for page in pages:
        remote = [u for u in _refs(page).loads if urlsplit(u).scheme in ("http", "https") or u.startswith("//")]
        assert not remote, f"{page.name} loads {remote[:3]} from the internet"
        assert "cdnjs" not in page.read_text(encoding="utf-8"), f"{page.name} still names a CDN"


def test_relative_links_and_loads_resolve(any_site):
    out, _ = any_site
    for page in out.glob("*.html"):
        refs = _refs(page)
        for url in [u for u in refs.links + refs.loads if _local(u) and not u.startswith("data:")]:
            target = out / unquote(urlsplit(url).path)
            assert target.is_file(), f"{page.name} points at {url}, which is not in the site"


def test_every_executed_notebook_has_a_page_with_navigation(any_site):
    out, executed = any_site
    stems = sorted(p.stem for p in executed.glob("[0-9][0-9]_*.ipynb"))
    assert sorted(p.stem for p in out.glob("[0-9][0-9]_*.html")) == stems
    index_links = _refs(out / "index.html").links
    assert [u for u in index_links if u.endswith(".html")] == [f"{s}.html" for s in stems]
    for i, stem in enumerate(stems):
        links = _refs(out / f"{stem}.html").links
        assert "index.html" in links
        if i > 0:
            assert f"{stems[i - 1]}.html" in links
        if i + 1 < len(stems):
            assert f"{stems[i + 1]}.html" in links


def test_index_lists_titles_goals_and_what_is_not_executed(synthetic_site):
    out, _ = synthetic_site
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "01 · Alpha: a <em>formula</em> and a figure" in index and "02 · Beta" in index
    assert "<strong>Learning goals.</strong>" in index and "see a figure." in index
    assert "03_gamma" in index and "not executed yet" in index and "--only 03" in index


def test_notebook_links_point_at_pages(synthetic_site):
    out, _ = synthetic_site
    assert 'href="02_beta.html"' in (out / "01_alpha.html").read_text(encoding="utf-8")
    assert 'href="01_alpha.html"' in (out / "02_beta.html").read_text(encoding="utf-8")
    assert site._link_notebooks('href="x/01_a.ipynb#Goal-1"', {"01_a"}) == 'href="01_a.html#Goal-1"'
    assert site._link_notebooks('href="09_b.ipynb"', {"01_a"}) == 'href="09_b.ipynb"'


def test_without_executed_notebooks_the_error_names_the_command(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = site.main(["--executed", str(tmp_path / "empty"), "--out", str(tmp_path / "site")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: no executed notebooks")
    assert "make notebooks" in err and "python -m helpers.run --profile teaching" in err
    assert not (tmp_path / "site").exists()


def test_a_failed_build_keeps_the_previous_site(synthetic_site, tmp_path, monkeypatch):
    _, executed = synthetic_site
    out = tmp_path / "site"
    site.build_site(out=out, executed_dir=executed, notebook_dir=executed, mathjax=False)
    (out / "stale.html").write_text("left over")

    def broken(*args, **kwargs):
        raise RuntimeError("broken on purpose")

    with monkeypatch.context() as m:
        m.setattr(site, "render_notebook", broken)
        with pytest.raises(RuntimeError, match="broken on purpose"):
            site.build_site(out=out, executed_dir=executed, notebook_dir=executed, mathjax=False)
    assert (out / "stale.html").is_file() and (out / "01_alpha.html").is_file()
    site.build_site(out=out, executed_dir=executed, notebook_dir=executed, mathjax=False)
    assert not (out / "stale.html").exists() and (out / "02_beta.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"], "temporary folders were left behind"


def test_without_npm_formulas_stay_tex(synthetic_site, tmp_cache, tmp_path, monkeypatch, capsys):
    _, executed = synthetic_site
    monkeypatch.setattr(site.shutil, "which", lambda name: None)
    out = site.build_site(out=tmp_path / "site", executed_dir=executed, notebook_dir=executed)
    assert "npm is not installed" in capsys.readouterr().err
    page = (out / "01_alpha.html").read_text(encoding="utf-8")
    assert "window.MathJax" not in page and not [u for u in _refs(out / "01_alpha.html").loads if "mathjax" in u]
    assert r"$e^{i\pi} + 1 = 0$" in page and not (out / "_static").exists()


# ---------------------------------------------------------------------------------------------- in a browser


@pytest.fixture(scope="module")
def browser():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.skip(f"no headless browser: {', '.join(missing)} missing; `make browser` installs Debian's chromium "
                    "and chromium-driver (apt-get, as root)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[dev]'")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,900", "--host-resolver-rules=MAP * ~NOTFOUND"):  # no internet
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(60)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


# MathJax replaces the configuration object window.MathJax once its deferred script has run; on a busy machine that
# can be after the page reports loaded, so wait for it (up to 30 s) before waiting for its typesetting
WAIT_FOR_MATHJAX = """const done = arguments[arguments.length - 1];
const t0 = Date.now();
(function wait() {
  const mj = window.MathJax;
  if (mj && mj.startup && mj.startup.promise) mj.startup.promise.then(() => done("typeset"), e => done("error " + e));
  else if (Date.now() - t0 < 30000) setTimeout(wait, 50);
  else done(mj ? "not loaded" : "none");
})();"""

PAGE_STATE = """return {
  images: [...document.images].map(i => ({src: i.src.slice(0, 60), complete: i.complete, width: i.naturalWidth})),
  links: [...document.querySelectorAll("a[href]")].map(a => a.getAttribute("href")),
  formulas: document.querySelectorAll("mjx-container").length,
  mathErrors: document.querySelectorAll("mjx-merror, [data-mjx-error]").length,
  ids: [...document.querySelectorAll("[id]")].map(e => e.id),
};"""


def _visit(browser, page: Path) -> tuple[str, dict, list]:
    browser.get(page.as_uri())
    mathjax = browser.execute_async_script(WAIT_FOR_MATHJAX)
    state = browser.execute_script(PAGE_STATE)
    return mathjax, state, browser.get_log("browser")


def _figures(executed: Path) -> int:
    nb = nbformat.read(executed, as_version=4)
    return sum(1 for c in nb.cells for o in c.get("outputs", [])
               if {"image/png", "image/jpeg"} & set(o.get("data", {})))


def _has_tex(text: str) -> bool:
    return bool(re.search(r"\$[^$\s][^$]*\$", text))


def test_site_in_a_headless_browser(any_site, browser):
    """From the index, every page loads without console errors, its figures render, its links resolve."""
    out, executed = any_site
    vendored = (out / site.MATHJAX_URL).is_file()
    todo, seen = ["index.html"], set()
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.add(name)
        mathjax, state, log = _visit(browser, out / name)
        severe = [e["message"] for e in log if e["level"] == "SEVERE"]
        assert not severe, f"{name}: console errors {severe[:3]}"
        broken = [i["src"] for i in state["images"] if not (i["complete"] and i["width"] > 0)]
        assert not broken, f"{name}: {len(broken)} image(s) did not render: {broken[:3]}"
        source = executed / f"{Path(name).stem}.ipynb"
        if source.is_file():
            assert len(state["images"]) >= _figures(source), f"{name} shows fewer figures than its notebook has"
        if vendored:
            assert mathjax == "typeset" and state["mathErrors"] == 0, f"{name}: MathJax {mathjax}"
            markdown = (out / name).read_text(encoding="utf-8") if not source.is_file() else "\n".join(
                c.source for c in nbformat.read(source, as_version=4).cells if c.cell_type == "markdown")
            if name == "index.html":
                markdown = re.sub(r"<script.*?</script>", "", markdown, flags=re.DOTALL)
            if _has_tex(markdown):
                assert state["formulas"] > 0, f"{name}: its formulas were not typeset"
        for href in state["links"]:
            parts = urlsplit(href)
            if parts.scheme or parts.netloc or href.startswith("mailto:"):
                continue  # a link out of the site (a paper, a repository) is for the reader to follow
            if not parts.path:
                # HTML looks the fragment up as written, then percent-decoded (nbconvert's ids keep the %XX)
                assert {parts.fragment, unquote(parts.fragment)} & set(state["ids"]), f"{name}: no anchor {href}"
                continue
            assert (out / unquote(parts.path)).is_file(), f"{name} links to {href}, which is not in the site"
            if parts.path.endswith(".html"):
                todo.append(unquote(parts.path))
    assert seen == {p.name for p in out.glob("*.html")}, "pages not reachable from the index"


def test_the_browser_checks_catch_a_broken_page(browser, tmp_path):
    """Control: a script from the internet and a missing figure are caught, so a pass means something."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><script src="https://cdn.example.org/lib.js"></script></head>'
                    '<body><img src="missing.png"></body></html>')
    _, state, log = _visit(browser, page)
    assert [e for e in log if e["level"] == "SEVERE"]
    assert state["images"] and state["images"][0]["width"] == 0
