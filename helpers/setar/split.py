"""SeTAR's published search split: one fixed ImageNet-1k *train* image per class.

The official search and fine-tuning (``X1AOX1A/SeTAR``: ``searchers.py`` and ``finetune.py``, both with
``split = "val"``) read an ImageFolder ``ID_ImageNet1K/val`` that holds exactly the 1,000 training images listed in
``data/ID_ImageNet1K/imagenet1k_val_data.json`` (``{wnid: [file name]}``, one file per class). That list is data:
it ships with this package as ``imagenet1k_search_split.json`` (the same 1,000 entries as ``<wnid>/<file name>``,
sorted; its source repository, path and commit are recorded in the file).

:func:`published_split` builds that split from a local ImageNet-1k train ImageFolder (``imagenet-train``, or any
folder of ``<wnid>/<file>``) without listing its 1.28 million files: it checks the 1,000 listed files, labels
each by its class folder's index among the folder's sorted class folders (the standard ImageNet-1k index when the
folder holds the 1,000 classes) and keeps ImageFolder's order (class, then file name), the order in which the
official loader reads them (``shuffle=False``), so the search's batches of 512 hold the same images.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from ..data import ImageFolderDataset, read_class_names
from ..data import _spec_and_root as spec_and_root
from ..data.imagefolder import class_folders
from ..errors import DatasetNotPreparedError
from ..paths import data_dir as default_data_dir

LIST_FILE = Path(__file__).with_name("imagenet1k_search_split.json")


@functools.cache
def _list() -> dict:
    return json.loads(LIST_FILE.read_text())


def published_files() -> list[str]:
    """The 1,000 files of SeTAR's published search split, ``<wnid>/<file name>``, sorted."""
    return list(_list()["files"])


def published_source() -> dict:
    """Where the list comes from: ``{"repo", "path", "commit", ...}``."""
    return dict(_list()["source"])


def published_split(source: str | os.PathLike = "imagenet-train", *, data_dir: str | os.PathLike | None = None,
                    name: str | None = None, on_error: str = "fail") -> ImageFolderDataset:
    """The published search split as a dataset of the ImageNet-1k train ImageFolder ``source`` (a registered
    name or a folder of ``<wnid>/<file>``): the 1,000 listed images, labelled by their class folder, in
    ImageFolder order. A file of the list that the folder lacks is an error naming the missing files."""
    spec, root = spec_and_root(os.fspath(source), Path(data_dir) if data_dir else default_data_dir())
    files = published_files()
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        shown = ", ".join(missing[:10]) + (f", ... ({len(missing) - 10} more)" if len(missing) > 10 else "")
        raise DatasetNotPreparedError(
            f"{root} lacks {len(missing)} of the {len(files)} ImageNet-1k train images of SeTAR's published search "
            f"split ({published_source()['repo']} {published_source()['path']}): {shown}. Fix: point the search "
            f"dataset at a complete ImageNet-1k train folder (<wnid>/<file>.JPEG, ILSVRC2012_img_train), or search "
            f"on a random split instead (search_list=None draws search_per_class images per class).")
    classes = class_folders(root)
    index = {c: i for i, c in enumerate(classes)}
    samples = [(f, index[f.split("/", 1)[0]]) for f in files]
    names = read_class_names(spec.class_names, root, classes)
    return ImageFolderDataset(name or f"{spec.name}-setar-published", root, classes, names, samples,
                              on_error=on_error)
