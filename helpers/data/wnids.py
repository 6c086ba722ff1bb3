"""Prompt-ready names for class folders named by WordNet id (``n01440764``), as ImageNet-style trees are.

A folder called ``n01440764`` would otherwise become the prompt "a photo of a n01440764". :func:`wnid_names`
names such folders from the first source that knows them all, in this order:

1. a ``classes.tsv`` beside the class folders (``<wnid><TAB><name>`` per line): the user's own names;
2. open_clip's ImageNet-1k class names (``IMAGENET_CLASSNAMES``, in sorted-wnid order; the 1000 wnids come
   from timm, an open_clip dependency), for ImageNet-1k wnids;
3. WordNet 3.0, whose noun offsets *are* the wnids' numbers: nltk's corpus when downloaded, else Debian's
   ``wordnet-base`` files (``data.noun``, read at byte offset = the number; see :mod:`helpers.words`);
4. timm's ImageNet-21k lemma list (``imagenet_synset_to_lemma.txt``), for machines with neither.

The first lemma of a synset is its name. A wnid that none of them knows is an error naming the folders.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import ClipOODError
from ..words import wordnet_dir

WNID = re.compile(r"^n\d{8}$")


class UnnamedClassesError(ClipOODError, ValueError):
    """Class folders named by WordNet id that no source of names knows."""


def all_wnids(classes: Sequence[str]) -> bool:
    """Whether every class folder name is a WordNet noun id (``n`` and eight digits)."""
    return bool(classes) and all(WNID.match(c) for c in classes)


def _timm_info(filename: str) -> Path | None:
    """A file of timm's ``data/_info`` folder, found without importing timm; None when absent."""
    spec = importlib.util.find_spec("timm")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "data" / "_info" / filename
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=1)
def imagenet_names() -> dict[str, str]:
    """ImageNet-1k wnid -> open_clip's class name (empty when timm's wnid list is missing)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    path = _timm_info("imagenet_synsets.txt")
    wnids = sorted(path.read_text().split()) if path else []
    return dict(zip(wnids, IMAGENET_CLASSNAMES)) if len(wnids) == len(IMAGENET_CLASSNAMES) else {}


@functools.lru_cache(maxsize=1)
def imagenet21k_lemmas() -> dict[str, str]:
    """wnid -> lemmas (``"dog, domestic dog, Canis familiaris"``) of timm's ImageNet-21k list; empty if absent."""
    path = _timm_info("imagenet_synset_to_lemma.txt")
    if path is None:
        return {}
    return dict(line.split("\t", 1) for line in path.read_text().splitlines() if "\t" in line)


def nltk_lemma(wnid: str) -> str | None:
    """The first lemma of the noun synset ``wnid`` from nltk's WordNet corpus; None when unknown or absent."""
    try:
        from nltk.corpus import wordnet as wn

        return wn.synset_from_pos_and_offset("n", int(wnid[1:])).lemma_names()[0]
    except (ImportError, LookupError, OSError, ValueError, AttributeError):
        return None


def debian_lemma(wnid: str, folder: str | Path | None = None) -> str | None:
    """The first lemma of the noun synset ``wnid`` from WordNet's ``data.noun`` (the wnid's number is the
    synset's byte offset there); None when the file is missing or holds no synset at that offset."""
    path = Path(folder or wordnet_dir()) / "data.noun"
    offset = int(wnid[1:])
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            fields = f.readline().decode("utf-8", "replace").split()
    except OSError:
        return None
    if len(fields) < 5 or fields[0] != wnid[1:] or fields[2] != "n":
        return None  # not the start of a synset: the offset is not a WordNet 3.0 noun
    return fields[4]


def _tsv_names(root: Path) -> dict[str, str]:
    tsv = root / "classes.tsv"
    if not tsv.is_file():
        return {}
    return dict(line.split("\t", 1) for line in tsv.read_text().splitlines() if "\t" in line)


def _sources(root: Path) -> list[tuple[str, Callable[[str], str | None]]]:
    tsv = _tsv_names(root)
    return [(str(root / "classes.tsv"), tsv.get), ("open_clip's ImageNet-1k names", lambda w: imagenet_names().get(w)),
            ("WordNet (nltk)", nltk_lemma), (f"WordNet ({wordnet_dir() / 'data.noun'})", debian_lemma),
            ("timm's ImageNet-21k lemmas", lambda w: imagenet21k_lemmas().get(w))]


def wnid_names(root: Path, classes: Sequence[str], prompt_name: Callable[[str], str]) -> list[str]:
    """Names of the wnid class folders ``classes`` of ``root`` (see the module docstring), each through
    ``prompt_name`` (first synonym, underscores as spaces)."""
    names: dict[str, str] = {}
    for _, lookup in _sources(root):
        for c in classes:
            if c not in names and (found := lookup(c)):
                names[c] = prompt_name(found)
        if len(names) == len(classes):
            return [names[c] for c in classes]
    unknown = [c for c in classes if c not in names]
    raise UnnamedClassesError(
        f"{len(unknown)} class folder(s) of {root} are named by WordNet id but no source knows them: "
        f"{', '.join(unknown[:10])}{', ...' if len(unknown) > 10 else ''} (tried: "
        f"{'; '.join(s for s, _ in _sources(root))}). They would become prompts like 'a photo of a {unknown[0]}'. "
        f"Fix: write {root / 'classes.tsv'} with one '<folder><TAB><class name>' line per class folder, or pass "
        f"get_dataset(..., class_names=[...]) (one name per folder, sorted folder order), or install WordNet "
        f"(`apt-get install -y wordnet-base` or `python -m nltk.downloader wordnet`).")
