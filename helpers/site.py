"""Render the executed notebooks into a static course site: ``python -m helpers.site [--profile teaching]``.

For students who read before they run: every executed notebook in ``build/<profile>/`` (written by
``python -m helpers.run``) becomes ``build/site/NN_topic.html`` — text, code, outputs, tables and figures — next to
an ``index.html`` that lists each notebook's title and learning goals. Every page links to the index and to the
previous and next notebook. The folder opens from disk in any browser, without Jupyter and without internet:

* figures are embedded in the pages (base64), the styles are inlined, no script or style comes from a CDN
  (nbconvert's require.js, widget and mermaid loaders are left out);
* formulas are typeset by MathJax 3, vendored from the npm registry (``npm pack mathjax@3``, kept in
  ``<cache>/npm/``) into ``_static/mathjax/``. Its SVG output is used, so no web font has to be loaded (browsers
  refuse fonts from ``file://`` pages). Without npm and without a cached copy the site is still built, with a
  warning, and formulas stay readable as TeX source.

The site is built in a temporary folder next to ``--out`` and then moved onto it, so a failed build leaves the
previous site in place. Source notebooks without an executed copy (``notebooks/NN_*.ipynb``) are listed in the
index as not executed, with the command that executes them.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .paths import REPO_ROOT, cache_dir

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
SITE_DIR = REPO_ROOT / "build" / "site"
MATHJAX_PACKAGE = "mathjax@3"
MATHJAX_FILES = {"package/es5/tex-svg-full.js": "tex-svg-full.js", "package/LICENSE": "LICENSE"}
MATHJAX_URL = "_static/mathjax/tex-svg-full.js"  # relative to the site folder, where every page lives

# MathJax 3 reads this object on load; nbconvert's own configuration is for MathJax 2 (MathJax.Hub).
MATHJAX_CONFIG = r"""<script>
window.MathJax = {
  tex: {inlineMath: [["$", "$"], ["\\(", "\\)"]], displayMath: [["$$", "$$"], ["\\[", "\\]"]],
        processEscapes: true, processEnvironments: true, tags: "ams"},
  svg: {fontCache: "global"},
  options: {skipHtmlTags: ["script", "noscript", "style", "textarea", "pre", "code"]}
};
</script>"""

SITE_CSS = """<style type="text/css">
nav.site-nav { display: flex; gap: 1.5em; align-items: baseline; max-width: 1100px; margin: 0.6em auto;
  padding: 0.5em 1em; border: 1px solid #ddd; border-radius: 4px; background: #f7f7f7;
  font-family: system-ui, sans-serif; font-size: 14px; }
nav.site-nav a { text-decoration: none; color: #1a5fb4; }
nav.site-nav .next { margin-left: auto; }
</style>"""

# Extends nbconvert's lab template: site navigation around the notebook, local MathJax 3, nothing from a CDN.
PAGE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block html_head_js_mathjax -%}
{%- if resources.site_mathjax -%}
{{ resources.site_mathjax_config }}
<script defer src="{{ resources.site_mathjax }}"></script>
{%- endif -%}
{%- endblock html_head_js_mathjax -%}
{%- block extra_css -%}{{ resources.site_css }}{%- endblock extra_css -%}
{%- block body_header -%}
{{ super() }}
{{ resources.site_nav }}
{%- endblock body_header -%}
{%- block body_footer -%}
{{ resources.site_nav }}
{{ super() }}
{%- endblock body_footer -%}
"""


@dataclass
class Page:
    """One notebook of the series: its executed copy (None when not executed yet) and its page."""

    stem: str
    executed: Path | None
    title: str = ""
    goals: str = ""  # markdown of the "Learning goals." paragraph, "" when there is none

    @property
    def number(self) -> str:
        return self.stem[:2]

    @property
    def html_name(self) -> str:
        return f"{self.stem}.html"


# ---------------------------------------------------------------------------------------------- contents


def notebook_title(nb) -> str:
    """The first markdown heading of the notebook (its ``# ...`` line), or "" when it has none."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            m = re.search(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", cell.source, re.MULTILINE)
            if m:
                return m.group(1)
    return ""


def learning_goals(nb) -> str:
    """The markdown paragraph that starts with ``**Learning goals.**`` (up to the next blank line), or ""."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            m = re.search(r"^\*\*Learning goals\.?\*\*.*?(?=\n[ \t]*\n|\Z)", cell.source, re.MULTILINE | re.DOTALL)
            if m:
                return m.group(0)
    return ""


def plain_text(markdown: str) -> str:
    """``markdown`` without emphasis and code marks, for a window title."""
    return re.sub(r"[*_`]", "", markdown).strip()


def markdown_html(markdown: str, inline: bool = False) -> str:
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    out = markdown2html_mistune(markdown).strip()
    if inline and out.startswith("<p>") and out.endswith("</p>"):
        out = out[3:-4]
    return out


def collect_pages(executed_dir: Path, notebook_dir: Path = NOTEBOOK_DIR) -> list[Page]:
    """Every executed ``NN_*.ipynb`` in ``executed_dir`` and every source notebook without one, in number order."""
    import nbformat

    executed = {p.stem: p for p in executed_dir.glob("[0-9][0-9]_*.ipynb")}
    sources = {p.stem for p in notebook_dir.glob("[0-9][0-9]_*.ipynb")} if notebook_dir.is_dir() else set()
    pages = []
    for stem in sorted(executed.keys() | sources):
        page = Page(stem, executed.get(stem))
        if page.executed:
            nb = nbformat.read(page.executed, as_version=4)
            page.title, page.goals = notebook_title(nb) or stem, learning_goals(nb)
        pages.append(page)
    return pages


# ---------------------------------------------------------------------------------------------- MathJax


def _mathjax_tarball() -> Path | None:
    """The npm tarball of MathJax 3: the cached one, else a fresh ``npm pack`` into the cache; None without npm."""
    folder = cache_dir() / "npm"
    cached = sorted(folder.glob("mathjax-3.*.tgz"))
    if cached:
        return cached[-1]
    npm = shutil.which("npm")
    if npm is None:
        print("[site] warning: npm is not installed and no MathJax is cached in "
              f"{folder}: formulas will show as TeX source (install Node.js/npm, then rerun)", file=sys.stderr)
        return None
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        try:
            done = subprocess.run([npm, "pack", MATHJAX_PACKAGE, "--silent", "--fetch-retries=1"], cwd=tmp, capture_output=True,
                                  text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            done = subprocess.CompletedProcess([], 1, "", str(e))
        packed = sorted(Path(tmp).glob("mathjax-3.*.tgz"))
        if done.returncode != 0 or not packed:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no tarball written"]
            print(f"[site] warning: `npm pack {MATHJAX_PACKAGE}` failed ({last[0]}): formulas will show as TeX "
                  "source (check access to the npm registry, then rerun)", file=sys.stderr)
            return None
        os.replace(packed[-1], folder / packed[-1].name)
        return folder / packed[-1].name


def vendor_mathjax(site: Path) -> str | None:
    """Copy MathJax's single-file SVG build (and its licence) into ``site``; its relative URL, or None."""
    tarball = _mathjax_tarball()
    if tarball is None:
        return None
    dest = site / Path(MATHJAX_URL).parent
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(tarball) as tar:
            for member, name in MATHJAX_FILES.items():
                source = tar.extractfile(member)
                if source is None:
                    raise KeyError(member)
                (dest / name).write_bytes(source.read())
    except (KeyError, tarfile.TarError, OSError) as e:
        print(f"[site] warning: {tarball} is not a usable MathJax 3 package ({e}); delete it and rerun. "
              "Formulas will show as TeX source", file=sys.stderr)
        shutil.rmtree(dest, ignore_errors=True)
        return None
    return MATHJAX_URL


# ---------------------------------------------------------------------------------------------- pages


def navigation(pages: list[Page], i: int) -> str:
    """Links to the index and to the previous / next executed notebook."""
    def link(page: Page, rel: str, text: str) -> str:
        title = html.escape(plain_text(page.title))
        return f'<a class="{rel}" rel="{rel}" href="{page.html_name}" title="{title}">{text}</a>'

    parts = ['<a class="index" href="index.html">Index of the notebooks</a>']
    if i > 0:
        parts.append(link(pages[i - 1], "prev", f"&larr; {pages[i - 1].number}"))
    if i + 1 < len(pages):
        following = pages[i + 1]
        parts.append(link(following, "next", f"{following.number}: {html.escape(plain_text(following.title))} &rarr;"))
    return '<nav class="site-nav">' + "".join(parts) + "</nav>"


def _exporter():
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    return HTMLExporter(template_name="lab", theme="light", embed_images=True,
                        extra_loaders=[DictLoader({"site_page.html.j2": PAGE_TEMPLATE})],
                        template_file="site_page.html.j2")


def _link_notebooks(body: str, stems: set[str]) -> str:
    """Links to ``NN_topic.ipynb`` (any folder) point at the notebook's page when it has one."""
    def repl(m: re.Match) -> str:
        stem, frag = m.group(2), m.group(3) or ""
        return f'href="{stem}.html{frag}"' if stem in stems else m.group(0)

    return re.sub(r'href="([^"#]*/)?(\d\d_[^"#/]+)\.ipynb(#[^"]*)?"', repl, body)


def render_notebook(page: Page, nav: str, mathjax: str | None, stems: set[str], exporter=None) -> str:
    """The HTML page of one executed notebook, with ``nav`` above and below it."""
    import nbformat

    nb = nbformat.read(page.executed, as_version=4)
    nb.metadata["title"] = plain_text(page.title)
    resources = {"site_nav": nav, "site_css": SITE_CSS, "site_mathjax": mathjax,
                 "site_mathjax_config": MATHJAX_CONFIG, "metadata": {"name": page.stem}}
    body, _ = (exporter or _exporter()).from_notebook_node(nb, resources=resources)
    return _link_notebooks(body, stems)


def render_index(pages: list[Page], mathjax: str | None, source: str, profile: str) -> str:
    """The index page: every notebook with its title and learning goals, or the command that executes it."""
    items = []
    for page in pages:
        if page.executed is None:
            items.append(f'<li class="missing"><span class="num">{page.number}</span> <code>{page.stem}</code> '
                         f"&mdash; not executed yet: <code>python -m helpers.run --profile {profile} "
                         f"--only {page.number}</code></li>")
            continue
        goals = f'<div class="goals">{markdown_html(page.goals)}</div>' if page.goals else ""
        items.append(f'<li><a href="{page.html_name}">{markdown_html(page.title, inline=True)}</a>{goals}</li>')
    head = (f"{MATHJAX_CONFIG}\n<script defer src=\"{mathjax}\"></script>" if mathjax else "")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8" />
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>OOD detection with CLIP: the notebooks</title>
{head}
<style type="text/css">
body {{ font-family: system-ui, sans-serif; max-width: 900px; margin: 2em auto; padding: 0 1em; line-height: 1.5;
  color: #222; }}
ol.notebooks {{ list-style: none; padding: 0; }}
ol.notebooks > li {{ margin: 1.2em 0; padding: 0.8em 1em; border: 1px solid #ddd; border-radius: 4px; }}
ol.notebooks > li > a {{ font-size: 1.15em; font-weight: 600; text-decoration: none; color: #1a5fb4; }}
ol.notebooks > li.missing {{ color: #777; }}
.goals {{ font-size: 0.95em; }}
code {{ background: #f3f3f3; padding: 0 0.2em; }}
</style>
</head>
<body>
<main>
<h1>OOD detection with CLIP: the notebooks</h1>
<p>Executed copies of the notebooks, outputs and figures included, to read before running them. They were run
with the <code>{html.escape(profile)}</code> profile (from <code>{html.escape(source)}</code>). To run them yourself:
<code>make notebooks</code>, or open <code>notebooks/</code> in JupyterLab.</p>
<ol class="notebooks">
{chr(10).join(items)}
</ol>
</main>
</body>
</html>
"""


# ---------------------------------------------------------------------------------------------- site


def build_site(profile: str = "teaching", out: str | os.PathLike = SITE_DIR, executed_dir: str | os.PathLike | None = None,
               notebook_dir: str | os.PathLike = NOTEBOOK_DIR, mathjax: bool = True) -> Path:
    """Render every executed notebook of ``executed_dir`` (default ``build/<profile>``) and the index into ``out``.

    Raises :class:`UsageError` naming the command to run when there is no executed notebook.
    """
    executed_dir = Path(executed_dir) if executed_dir else REPO_ROOT / "build" / profile
    out = Path(out)
    pages = collect_pages(executed_dir, Path(notebook_dir))
    rendered = [p for p in pages if p.executed]
    if not rendered:
        raise UsageError(f"no executed notebooks (NN_*.ipynb) in {executed_dir}: run `make notebooks` "
                         f"(or `python -m helpers.run --profile {profile}`) first, then `make html`")
    for page in pages:
        if page.executed is None:
            print(f"[site] {page.stem}: not executed yet, listed in the index only "
                  f"(python -m helpers.run --profile {profile} --only {page.number})")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        tmp.chmod(0o755)
        url = vendor_mathjax(tmp) if mathjax else None
        exporter, stems = _exporter(), {p.stem for p in rendered}
        for i, page in enumerate(rendered):
            print(f"[site] {page.executed.name} -> {page.html_name}", flush=True)
            body = render_notebook(page, navigation(rendered, i), url, stems, exporter)
            (tmp / page.html_name).write_text(body, encoding="utf-8")
        (tmp / "index.html").write_text(render_index(pages, url, _display(executed_dir), profile), encoding="utf-8")
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m helpers.site", description=__doc__.split("\n")[0])
    from .profiles import COMMON

    p.add_argument("--profile", default="teaching", choices=list(COMMON),
                   help="render the executed notebooks of build/<profile>/ (default: teaching)")
    p.add_argument("--executed", help="render the executed notebooks of this folder instead")
    p.add_argument("--out", default=str(SITE_DIR), help="the site folder (default: build/site)")
    p.add_argument("--no-mathjax", action="store_true", help="do not vendor MathJax (formulas stay TeX source)")
    args = p.parse_args(argv)
    try:
        out = build_site(args.profile, args.out, args.executed, mathjax=not args.no_mathjax)
    except UsageError as e:
        print(f"error: {' '.join(str(e).splitlines())}", file=sys.stderr)
        return 2
    print(f"[site] open {out / 'index.html'} in a browser")
    return 0


if __name__ == "__main__":
    sys.exit(main())
