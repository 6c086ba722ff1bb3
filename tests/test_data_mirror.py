"""Mirror import robustness: checksum before tarfile, stale temporary folders, partial failures, one-line CLI."""

import hashlib
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from helpers.data import import_from_mirror
from helpers.data.__main__ import main as data_main
from helpers.errors import ChecksumMismatchError, MirrorError


def _folder(root, classes=("a", "b"), per_class=2):
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(np.full((8, 8, 3), 40 * ci + 10 * i, dtype=np.uint8)).save(root / c / f"{i:03d}.png")
    return root


def make_mirror(tmp_path, names=("toy",)):
    mirror = tmp_path / "mirror"
    mirror.mkdir(exist_ok=True)
    lines = []
    for name in names:
        src = _folder(tmp_path / "src" / name)
        archive = mirror / f"{name}.tar.gz"
        with tarfile.open(archive, "w:gz") as tf:
            tf.add(src, arcname=name)
        lines.append(f"{hashlib.sha256(archive.read_bytes()).hexdigest()}  {archive.name}\n")
    (mirror / "SHA256SUMS").write_text("".join(lines))
    return mirror


def test_damaged_archive_start_gives_checksum_error_not_tarfile(tmp_path):
    mirror = make_mirror(tmp_path)
    archive = mirror / "toy.tar.gz"
    raw = bytearray(archive.read_bytes())
    raw[:64] = b"\0" * 64  # damage at its start: gzip/tar cannot even find the first member
    archive.write_bytes(bytes(raw))
    with pytest.raises(ChecksumMismatchError, match=r"toy.tar.gz has sha256 .* Nothing was unpacked.*copy toy.tar.gz"):
        import_from_mirror(mirror, data=tmp_path / "data", progress=False)
    assert not (tmp_path / "data" / "toy").exists()


def test_already_imported_archive_is_skipped_without_reading_it(tmp_path):
    mirror = make_mirror(tmp_path)
    data = tmp_path / "data"
    target = import_from_mirror(mirror, data=data, progress=False)["toy.tar.gz"]
    assert json.loads((target / ".source.json").read_text())["archive"] == "toy.tar.gz"
    (mirror / "toy.tar.gz").write_bytes(b"")  # the marker alone says it is in place: the archive is not opened
    assert import_from_mirror(mirror, data=data, progress=False) == {"toy.tar.gz": target}


def test_stale_import_folders_are_removed_and_reported(tmp_path, capsys):
    mirror = make_mirror(tmp_path)
    data = tmp_path / "data"
    stale = data / ".import-toy-x1y2z3" / "toy" / "a"
    stale.mkdir(parents=True)  # what a killed import leaves behind
    (stale / "000.png").write_bytes(b"half")
    import_from_mirror(mirror, data=data, progress=True)
    out = capsys.readouterr().out
    assert not [p for p in data.iterdir() if p.name.startswith(".import-")]
    lines = [ln for ln in out.splitlines() if "interrupted import" in ln]
    assert len(lines) == 1 and ".import-toy-x1y2z3" in lines[0] and "removed 1 temporary folder" in lines[0]


def test_import_folder_of_a_running_import_is_kept(tmp_path):
    import subprocess
    import sys

    mirror = make_mirror(tmp_path)
    data = tmp_path / "data"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = data / f".import-other.pid{other.pid}-abc"
        dead = data / ".import-other.pid999999999-abc"
        busy.mkdir(parents=True)
        dead.mkdir()
        import_from_mirror(mirror, data=data, progress=False)
        assert busy.is_dir() and not dead.exists()
    finally:
        other.kill()
        other.wait()


def test_one_bad_archive_does_not_stop_the_others(tmp_path):
    mirror = make_mirror(tmp_path, names=("aaa", "bbb", "ccc"))
    (mirror / "aaa.tar.gz").unlink()  # missing
    (mirror / "ccc.tar.gz").write_bytes(b"garbage")  # corrupt
    data = tmp_path / "data"
    with pytest.raises(MirrorError) as info:
        import_from_mirror(mirror, data=data, progress=False)
    msg = str(info.value)
    assert "2 archives could not be imported (imported: bbb.tar.gz)" in msg
    assert "aaa.tar.gz is listed in SHA256SUMS but missing" in msg and "copy it into the mirror again" in msg
    assert "ccc.tar.gz has sha256" in msg and "copy ccc.tar.gz into the mirror again" in msg
    assert ".." not in msg.replace("...", "")
    assert set(info.value.failures) == {"aaa.tar.gz", "ccc.tar.gz"} and set(info.value.imported) == {"bbb.tar.gz"}
    assert len(list((data / "bbb").rglob("*.png"))) == 4  # the good one was imported
    assert not (data / "aaa").exists() and not (data / "ccc").exists()


def test_all_mismatches_keep_the_checksum_error_class(tmp_path):
    mirror = make_mirror(tmp_path, names=("aaa", "bbb"))
    (mirror / "SHA256SUMS").write_text(f"{'0' * 64}  aaa.tar.gz\n{'1' * 64}  bbb.tar.gz\n")
    with pytest.raises(ChecksumMismatchError, match="2 archives could not be imported"):
        import_from_mirror(mirror, data=tmp_path / "data", progress=False)


def test_cli_prints_one_error_line_and_exits_2(tmp_path, capsys):
    mirror = make_mirror(tmp_path, names=("aaa", "bbb"))
    (mirror / "aaa.tar.gz").unlink()
    code = data_main(["import", "--mirror", str(mirror), "--data-dir", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and "aaa.tar.gz is listed in SHA256SUMS" in err
    assert "Traceback" not in err
    assert (tmp_path / "data" / "bbb" / ".source.json").is_file()
