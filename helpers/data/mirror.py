"""Import datasets from a local mirror folder: verify ``SHA256SUMS``, unpack atomically, idempotently.

A mirror is a folder of ``<name>.tar.gz`` archives, each unpacking to one ImageFolder tree, plus a
``SHA256SUMS`` file (``<sha256>  <archive>`` per line). Importing an archive

1. checks it against ``SHA256SUMS`` (a mismatch unpacks nothing),
2. unpacks it into a temporary folder inside the data folder,
3. moves the tree into place with one rename and records ``.source.json`` in it.

An archive whose tree is already in place with the same checksum is skipped, so importing twice is
cheap and a half-finished import (killed mid-way) is redone from scratch.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
from pathlib import Path

from ..errors import ChecksumMismatchError, MirrorError
from ..io import sha256_file
from ..paths import data_dir as default_data_dir
from ..paths import mirror_dir as default_mirror_dir

MARKER = ".source.json"


def read_checksums(mirror: Path) -> dict[str, str]:
    sums = mirror / "SHA256SUMS"
    if not sums.is_file():
        raise MirrorError(f"{sums} is missing: a mirror folder must list its archives' sha256 in SHA256SUMS.")
    out = {}
    for line in sums.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            out[name.strip().lstrip("*")] = digest.lower()
    return out


def archive_top_folder(archive: Path) -> str:
    with tarfile.open(archive) as tf:
        for member in tf:
            top = member.name.lstrip("./").split("/")[0]
            if top:
                return top
    raise MirrorError(f"{archive} is empty.")


def is_imported(target: Path, digest: str) -> bool:
    marker = target / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("sha256") == digest
    except (OSError, ValueError):
        return False


def import_archive(mirror: Path, archive_name: str, digest: str, data: Path) -> Path:
    archive = mirror / archive_name
    if not archive.is_file():
        raise MirrorError(f"{archive} is listed in SHA256SUMS but missing. Fix: copy it into the mirror again.")
    top = archive_top_folder(archive)
    target = data / top
    if is_imported(target, digest):
        return target
    actual = sha256_file(archive)
    if actual != digest:
        raise ChecksumMismatchError(
            f"{archive} has sha256 {actual[:16]}... but SHA256SUMS expects {digest[:16]}...: the copy is corrupt "
            f"or incomplete. Nothing was unpacked. Fix: copy {archive_name} into the mirror again."
        )
    data.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=data, prefix=f".import-{top}-"))
    try:
        with tarfile.open(archive) as tf:
            tf.extractall(tmp, filter="data")
        n_files = sum(1 for p in (tmp / top).rglob("*") if p.is_file())
        (tmp / top / MARKER).write_text(json.dumps({"archive": archive_name, "sha256": digest, "files": n_files}))
        if target.exists():  # stale or half-imported tree: replace it
            shutil.rmtree(target)
        (tmp / top).rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def import_from_mirror(mirror: str | Path | None = None, archives: list[str] | None = None,
                       data: str | Path | None = None, progress: bool = True) -> dict[str, Path]:
    """Import ``archives`` (default: every archive in ``SHA256SUMS``) from ``mirror`` into ``data``.

    ``mirror`` defaults to ``$CLIPOOD_MIRROR``; ``data`` to :func:`helpers.paths.data_dir`.
    Returns ``{archive: unpacked folder}``.
    """
    mirror_path = default_mirror_dir(mirror)
    if mirror_path is None:
        raise MirrorError("No dataset mirror given. Fix: pass --mirror DIR (make: MIRROR=DIR) or set CLIPOOD_MIRROR.")
    if not mirror_path.is_dir():
        raise MirrorError(f"Mirror folder {mirror_path} does not exist. Fix: pass the folder that holds the "
                          f"dataset archives and SHA256SUMS via --mirror DIR or CLIPOOD_MIRROR.")
    sums = read_checksums(mirror_path)
    wanted = archives or sorted(sums)
    unknown = [a for a in wanted if a not in sums]
    if unknown:
        raise MirrorError(f"{unknown} not listed in {mirror_path / 'SHA256SUMS'} (listed: {sorted(sums)}).")
    data_path = Path(data) if data else default_data_dir()
    out = {}
    for name in wanted:
        if progress:
            print(f"[data] {name} -> {data_path}", flush=True)
        out[name] = import_archive(mirror_path, name, sums[name], data_path)
    return out
