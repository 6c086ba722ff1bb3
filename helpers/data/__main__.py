"""``python -m helpers.data {import,list,prepare}``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ClipOODError
from . import DATASETS, import_from_mirror
from .sources import PREPARERS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m helpers.data")
    sub = p.add_subparsers(dest="cmd", required=True)
    imp = sub.add_parser("import", help="verify and unpack archives from a local mirror")
    imp.add_argument("--mirror", help="mirror folder (default: $CLIPOOD_MIRROR)")
    imp.add_argument("--data-dir", help="target data folder (default: $CLIPOOD_DATA or <repo>/data)")
    imp.add_argument("archives", nargs="*", help="archive names (default: all in SHA256SUMS)")
    sub.add_parser("list", help="list registered datasets")
    prep = sub.add_parser("prepare", help="prepare from the official source (needs internet)")
    prep.add_argument("source", choices=sorted(PREPARERS))
    prep.add_argument("--download-dir", required=True)
    args = p.parse_args(argv)
    try:
        if args.cmd == "import":
            import_from_mirror(args.mirror, args.archives or None, args.data_dir)
        elif args.cmd == "list":
            for s in DATASETS.values():
                print(f"{s.name:22s} {s.role:7s} {s.root:28s} {s.description}")
        else:
            PREPARERS[args.source](Path(args.download_dir))
    except ClipOODError as e:
        print(f"error: {' '.join(str(e).splitlines())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
