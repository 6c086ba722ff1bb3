"""Import datasets from a local mirror folder: verify ``SHA256SUMS``, unpack atomically, idempotently.

A mirror is a folder of ``<name>.tar.gz`` archives, each unpacking to one ImageFolder tree, plus a
``SHA256SUMS`` file (``<sha256>  <archive>`` per line). Importing an archive

1. skips it when a tree under the data folder records (in its ``.source.json``) that it was unpacked from
   this archive with this checksum — only the markers are read, the archive is not opened;
2. otherwise checks the archive's sha256 against ``SHA256SUMS`` *before* opening it (a damaged archive gives
   :class:`~helpers.errors.ChecksumMismatchError`, never a tarfile traceback, and unpacks nothing),
3. unpacks it into a hidden temporary folder ``.import-*`` inside the data folder,
4. moves the tree into place with one rename (replacing a stale or half-imported tree) and records
   ``.source.json`` in it.

A killed import leaves its ``.import-*`` folder behind; the next import removes such leftovers (and says
so). One missing or damaged archive does not stop the others: every archive that can be imported is, then
one error lists each failure with its fix.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path

from ..errors import ChecksumMismatchError, ClipOODError, MirrorError, clause
from ..io import sha256_file
from ..paths import data_dir as default_data_dir
from ..paths import mirror_dir as default_mirror_dir

MARKER = ".source.json"
TMP_PREFIX = ".import-"


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
    """The top folder an archive unpacks to. Opens the archive: call it only once its checksum is verified."""
    with tarfile.open(archive) as tf:
        for member in tf:
            top = member.name.lstrip("./").split("/")[0]
            if top:
                return top
    raise MirrorError(f"{archive} is empty.")


def _read_marker(marker: Path) -> dict:
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def is_imported(target: Path, digest: str) -> bool:
    return _read_marker(target / MARKER).get("sha256") == digest


def imported_folder(data: Path, archive_name: str, digest: str) -> Path | None:
    """The tree under ``data`` whose marker says it was unpacked from ``archive_name`` with ``digest``."""
    if not data.is_dir():
        return None
    for marker in sorted(data.glob(f"*/{MARKER}")):
        info = _read_marker(marker)
        if info.get("archive") == archive_name and info.get("sha256") == digest:
            return marker.parent
    return None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process has no import in flight when it looks for leftovers
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def remove_stale_imports(data: Path, progress: bool = True) -> list[str]:
    """Remove the hidden ``.import-*`` folders that an interrupted import left in ``data``; their names.

    A folder whose name records the id of a process that is still running (an import in progress beside this
    one) is kept.
    """
    if not data.is_dir():
        return []
    stale = []
    for p in sorted(data.iterdir()):
        if p.name.startswith(TMP_PREFIX) and p.is_dir():
            m = re.search(r"\.pid(\d+)-", p.name)
            if m is None or not _alive(int(m.group(1))):
                stale.append(p)
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    if stale and progress:
        print(f"[data] removed {len(stale)} temporary folder(s) left by an interrupted import: "
              f"{', '.join(p.name for p in stale)}", flush=True)
    return [p.name for p in stale]


def import_archive(mirror: Path, archive_name: str, digest: str, data: Path) -> Path:
    done = imported_folder(data, archive_name, digest)
    if done is not None:
        return done
    archive = mirror / archive_name
    if not archive.is_file():
        raise MirrorError(f"{archive} is listed in SHA256SUMS but missing. Fix: copy it into the mirror again.")
    actual = sha256_file(archive)  # before tarfile ever sees it
    if actual != digest:
        raise ChecksumMismatchError(
            f"{archive} has sha256 {actual[:16]}... but SHA256SUMS expects {digest[:16]}...: the copy is corrupt "
            f"or incomplete. Nothing was unpacked. Fix: copy {archive_name} into the mirror again."
        )
    try:
        top = archive_top_folder(archive)
    except tarfile.TarError as e:
        raise MirrorError(f"{archive} matches SHA256SUMS but is not a readable tar archive ({clause(e)}). "
                          f"Nothing was unpacked. Fix: rebuild {archive_name} and its SHA256SUMS line.") from e
    target = data / top
    if is_imported(target, digest):  # imported before markers named their archive
        return target
    data.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=data, prefix=f"{TMP_PREFIX}{top}.pid{os.getpid()}-"))
    try:
        try:
            with tarfile.open(archive) as tf:
                tf.extractall(tmp, filter="data")
        except tarfile.TarError as e:
            raise MirrorError(f"{archive} matches SHA256SUMS but cannot be unpacked ({clause(e)}). Nothing was "
                              f"moved into place. Fix: rebuild {archive_name} and its SHA256SUMS line.") from e
        n_files = sum(1 for p in (tmp / top).rglob("*") if p.is_file())
        (tmp / top / MARKER).write_text(json.dumps({"archive": archive_name, "sha256": digest, "files": n_files}))
        if target.exists():  # stale or half-imported tree: replace it
            shutil.rmtree(target)
        (tmp / top).rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _combined_error(failures: dict[str, ClipOODError], imported: dict[str, Path]) -> ClipOODError:
    """One error for every failed archive, on one line; its class is the failures' class when they share it."""
    if len(failures) == 1:
        err = next(iter(failures.values()))
    else:
        kinds = {type(e) for e in failures.values()}
        cls = kinds.pop() if len(kinds) == 1 else MirrorError
        others = f"imported: {', '.join(imported)}" if imported else "nothing else was imported"
        err = cls(f"{len(failures)} archives could not be imported ({others}): "
                  + "; ".join(clause(e) for e in failures.values()) + ".")
    err.failures = failures
    err.imported = imported
    return err


def import_from_mirror(mirror: str | Path | None = None, archives: list[str] | None = None,
                       data: str | Path | None = None, progress: bool = True) -> dict[str, Path]:
    """Import ``archives`` (default: every archive in ``SHA256SUMS``) from ``mirror`` into ``data``.

    ``mirror`` defaults to ``$CLIPOOD_MIRROR``; ``data`` to :func:`helpers.paths.data_dir`.
    Returns ``{archive: unpacked folder}``. When some archives fail (missing, checksum mismatch, unreadable),
    the others are still imported, then one :class:`~helpers.errors.MirrorError` (or
    :class:`~helpers.errors.ChecksumMismatchError` when every failure is a mismatch) lists every failure with
    its fix; its ``failures`` and ``imported`` attributes hold the details.
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
    remove_stale_imports(data_path, progress)
    out: dict[str, Path] = {}
    failures: dict[str, ClipOODError] = {}
    for name in wanted:
        if progress:
            print(f"[data] {name} -> {data_path}", flush=True)
        try:
            out[name] = import_archive(mirror_path, name, sums[name], data_path)
        except (MirrorError, ChecksumMismatchError) as e:
            failures[name] = e
            if progress:
                print(f"[data] {name}: not imported ({type(e).__name__})", flush=True)
    if failures:
        raise _combined_error(failures, out)
    return out
