"""Events of a notebook run that the runner reports on its console: skipped files, rebuilt caches, warnings.

When the environment variable ``CLIPOOD_EVENTS`` names a file (the runner sets it for each notebook's kernel),
:func:`record` appends one JSON object per line to it, and importing :mod:`helpers` installs :func:`install`, a
``warnings.showwarning`` hook that records every warning shown and then shows it as before. Without the
variable nothing is recorded and nothing is hooked.

Kinds: ``"skipped"`` (``dataset``, ``files``: images left out under ``on_error="skip"``), ``"rebuilt"`` (a warning
whose message says a cache is damaged or stale, so it is rebuilt) and ``"warning"`` (any other warning:
``category``, ``message``, ``where``). :func:`summarize` condenses a list of events into what the runner prints
(:func:`describe`) and stores in the manifest.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

ENV = "CLIPOOD_EVENTS"
REBUILT = re.compile(r"\b(damaged|stale)\b")  # the wording of helpers.cache.report_damage, every cache's warning
SHOW_FILES = 5  # skipped files named on the console; the manifest keeps them all


def record(kind: str, **fields) -> None:
    """Append one event to the file named by ``$CLIPOOD_EVENTS``; nothing when it is unset."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"kind": kind, **fields}, default=str) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())  # one write per event: lines of concurrent writers do not interleave
    finally:
        os.close(fd)


def _hook(show):
    def showwarning(message, category, filename, lineno, file=None, line=None):
        try:
            text = str(message)
            kind = "rebuilt" if REBUILT.search(text) else "warning"
            record(kind, category=category.__name__, message=text, where=f"{Path(filename).name}:{lineno}")
        except Exception:  # noqa: BLE001 - reporting must never break the warning itself
            pass
        return show(message, category, filename, lineno, file, line)

    showwarning.clipood_events = True
    return showwarning


def install() -> None:
    """Record every warning shown from now on (once per process; the previous hook still shows it)."""
    if not getattr(warnings.showwarning, "clipood_events", False):
        warnings.showwarning = _hook(warnings.showwarning)


def read(path: str | os.PathLike) -> list[dict]:
    """The events of ``path`` in order; a missing file has none, and a torn last line is ignored."""
    p = Path(path)
    if not p.is_file():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def summarize(events: list[dict]) -> dict:
    """``{"skipped": {dataset: [files]}, "rebuilt": [messages], "warnings": {category: {"count", "first"}}}``,
    only the keys that have something; repeated skipped files and rebuild messages are counted once."""
    skipped: dict[str, list[str]] = {}
    rebuilt: list[str] = []
    by_category: dict[str, dict] = {}
    for e in events:
        if e.get("kind") == "skipped":
            files = skipped.setdefault(str(e.get("dataset")), [])
            files += [f for f in e.get("files", []) if f not in files]
        elif e.get("kind") == "rebuilt":
            if e.get("message") not in rebuilt:
                rebuilt.append(e.get("message"))
        elif e.get("kind") == "warning":
            c = by_category.setdefault(e.get("category", "Warning"), {"count": 0, "first": e.get("message")})
            c["count"] += 1
    return {k: v for k, v in (("skipped", skipped), ("rebuilt", rebuilt), ("warnings", by_category)) if v}


def _short(text: str, n: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n - 3] + "..."


def describe(summary: dict) -> list[str]:
    """One line per dataset with skipped files, per rebuilt cache and per warning category."""
    lines = []
    for dataset, files in summary.get("skipped", {}).items():
        names = ", ".join(Path(f).name for f in files[:SHOW_FILES])
        more = f" and {len(files) - SHOW_FILES} more" if len(files) > SHOW_FILES else ""
        lines.append(f"skipped {len(files)} file(s) of {dataset}: {names}{more}")
    lines += [f"rebuilt: {_short(m)}" for m in summary.get("rebuilt", [])]
    for category, c in summary.get("warnings", {}).items():
        lines.append(f"{c['count']} {category}(s), first: {_short(c['first'])}")
    return lines


def merge(summaries: list[dict]) -> dict:
    """Several notebooks' summaries as one (skipped files and rebuilds united, warnings counted together)."""
    out: dict = {"skipped": {}, "rebuilt": [], "warnings": {}}
    for s in summaries:
        for dataset, files in s.get("skipped", {}).items():
            have = out["skipped"].setdefault(dataset, [])
            have += [f for f in files if f not in have]
        out["rebuilt"] += [m for m in s.get("rebuilt", []) if m not in out["rebuilt"]]
        for category, c in s.get("warnings", {}).items():
            have = out["warnings"].setdefault(category, {"count": 0, "first": c["first"]})
            have["count"] += c["count"]
    return {k: v for k, v in out.items() if v}
