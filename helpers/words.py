"""Candidate words for NegLabel: WordNet nouns and adjectives, obtainable offline.

NegLabel (Jiang et al., ICLR 2024; ``XueJiang16/NegLabel``, ``txtfiles/`` read by
``mmcls/models/classifiers/multi_modal.py``) mines its negative labels from WordNet's nouns and adjectives.
:func:`load_words` finds them without internet, trying in this order (``source="auto"``):

1. ``"nltk"``    nltk's WordNet corpus, when nltk *and* its downloaded corpus are installed
   (``python -m nltk.downloader wordnet``);
2. ``"debian"``  the WordNet 3.0 database files of Debian's ``wordnet-base`` package
   (``apt-get install -y wordnet-base``: ``/usr/share/wordnet/index.noun``, ``index.adj``; ``$WNSEARCHDIR``
   overrides the folder);
3. ``"list"``    a user word list (``word_list=``), see :func:`read_word_list`.

Passing ``source`` explicitly forces one of them. Both WordNet sources yield the same lemma names
(WordNet 3.0, lower case, underscores as spaces, sorted), so results do not depend on which was found.
:class:`Vocabulary.source` says which one was used.

Deviation from the reference files: NegLabel ships its own pre-extracted lists (about 70k words in all,
15% of which is "about 10k"); the lists here hold *every* WordNet 3.0 lemma (117,798 nouns and 18,341
adjectives), so more negatives are mined. A word that is both a noun and an adjective ("blue", "nice") is
kept once, as a noun: the reference also de-duplicates across its two files, in ``os.listdir`` order.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ClipOODError

SOURCES = ("nltk", "debian", "list")
DEBIAN_WORDNET_DIR = Path("/usr/share/wordnet")


class WordsUnavailableError(ClipOODError, FileNotFoundError):
    """No WordNet source (nor a word list) could be found."""


@dataclass(frozen=True)
class Vocabulary:
    """Candidate words by part of speech and where they came from."""

    nouns: tuple[str, ...]
    adjectives: tuple[str, ...]
    source: str  # "nltk" | "debian" | "list" (+ ", subsampled ..." after :func:`subsample`)
    location: str  # the corpus folder or the word-list file

    def __len__(self) -> int:
        return len(self.nouns) + len(self.adjectives)

    def describe(self) -> str:
        return f"{len(self.nouns)} nouns and {len(self.adjectives)} adjectives from {self.source} ({self.location})"


def _clean(words) -> list[str]:
    """Lemma names as prompt text: underscores as spaces, stripped, lower case, de-duplicated, sorted."""
    return sorted({w.replace("_", " ").strip().lower() for w in words} - {""})


def _vocabulary(nouns, adjectives, source: str, location: str) -> Vocabulary:
    nouns = _clean(nouns)
    seen = set(nouns)
    return Vocabulary(tuple(nouns), tuple(a for a in _clean(adjectives) if a not in seen), source, location)


def nltk_words() -> Vocabulary | None:
    """WordNet from nltk's downloaded corpus; None when nltk or its corpus is missing."""
    try:
        import nltk
        from nltk.corpus import wordnet as wn

        location = str(nltk.data.find("corpora/wordnet"))  # LookupError when the corpus is not downloaded
        # pos "a" covers the adjective index (head and satellite adjectives), like Debian's index.adj
        return _vocabulary(wn.all_lemma_names(pos="n"), wn.all_lemma_names(pos="a"), "nltk", location)
    except (ImportError, LookupError, OSError):
        return None


def wordnet_dir() -> Path:
    """The WordNet database folder: ``$WNSEARCHDIR`` if set, else Debian's ``/usr/share/wordnet``."""
    return Path(os.environ.get("WNSEARCHDIR") or DEBIAN_WORDNET_DIR)


def read_wordnet_index(path: str | os.PathLike) -> list[str]:
    """Lemma names of a WordNet ``index.<pos>`` file (the licence header lines start with a space)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return [line.split(" ", 1)[0] for line in f if line.strip() and not line.startswith(" ")]


def debian_words(folder: str | os.PathLike | None = None) -> Vocabulary | None:
    """WordNet from the ``index.noun`` / ``index.adj`` database files; None when they are missing."""
    folder = Path(folder) if folder else wordnet_dir()
    noun, adj = folder / "index.noun", folder / "index.adj"
    if not (noun.is_file() and adj.is_file()):
        return None
    return _vocabulary(read_wordnet_index(noun), read_wordnet_index(adj), "debian", str(folder))


def read_word_list(word_list: str | os.PathLike | Sequence[str] | Mapping[str, Sequence[str]]) -> Vocabulary:
    """A user vocabulary.

    ``word_list`` is a text file (one word per line; an optional second, tab-separated column ``noun`` or
    ``adj`` gives the part of speech, default noun; lines starting with ``#`` are comments), a sequence of
    words (nouns), or a mapping ``{"noun": [...], "adj": [...]}``.
    """
    if isinstance(word_list, Mapping):
        unknown = set(word_list) - {"noun", "adj"}
        if unknown:
            raise ValueError(f"word_list keys must be 'noun' and 'adj', not {sorted(unknown)}")
        return _vocabulary(word_list.get("noun", ()), word_list.get("adj", ()), "list", "<mapping>")
    if isinstance(word_list, (str, os.PathLike)):
        path = Path(word_list)
        if not path.is_file():
            raise WordsUnavailableError(f"word list {path} does not exist. Fix: give a text file with one word "
                                        f"per line (optionally '<word>\\tadj'), or set the word source to 'auto'.")
        nouns, adjs = [], []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            word, _, pos = line.partition("\t")
            pos = pos.strip().lower() or "noun"
            if pos not in ("noun", "adj"):
                raise ValueError(f"{path}:{n}: part of speech must be 'noun' or 'adj', not {pos!r}")
            (nouns if pos == "noun" else adjs).append(word)
        return _vocabulary(nouns, adjs, "list", str(path))
    return _vocabulary(list(word_list), (), "list", "<sequence>")


def load_words(source: str = "auto", word_list=None, folder: str | os.PathLike | None = None) -> Vocabulary:
    """NegLabel's candidate words from the first available source (see the module docstring).

    ``source``: ``"auto"`` (nltk -> Debian files -> ``word_list``), or one of :data:`SOURCES` to force it.
    ``folder`` overrides the WordNet database folder of the Debian source.
    """
    if source not in ("auto", *SOURCES):
        raise ValueError(f"word source must be 'auto' or one of {SOURCES}, not {source!r}")
    if source in ("auto", "nltk") and (v := nltk_words()) is not None:
        return v
    if source in ("auto", "debian") and (v := debian_words(folder)) is not None:
        return v
    if source in ("auto", "list") and word_list is not None:
        return read_word_list(word_list)
    tried = {"auto": "nltk's WordNet corpus, the WordNet files in {dir} and a word list",
             "nltk": "nltk's WordNet corpus", "debian": "the WordNet files in {dir}",
             "list": "a word list (none was given)"}[source].format(dir=Path(folder) if folder else wordnet_dir())
    raise WordsUnavailableError(
        f"No candidate words for NegLabel: tried {tried}. Fix: `apt-get install -y wordnet-base` (Debian/Ubuntu), "
        f"or `python -m nltk.downloader wordnet`, or pass word_list=<file with one word per line>.")


def subsample(vocab: Vocabulary, max_per_pos: int | None, seed: int = 42) -> Vocabulary:
    """At most ``max_per_pos`` nouns and adjectives each, drawn at random with ``seed`` (order kept).

    The reference has the same knob for nouns (``neg_subsample``, ``random.seed(42)``); small profiles use it
    to keep text encoding cheap. ``None`` keeps everything.
    """
    if max_per_pos is None or len(vocab.nouns) <= max_per_pos and len(vocab.adjectives) <= max_per_pos:
        return vocab
    if max_per_pos < 1:
        raise ValueError(f"max_per_pos must be a positive number or None, not {max_per_pos}")
    rng = np.random.default_rng(seed)

    def pick(words: tuple[str, ...]) -> tuple[str, ...]:
        if len(words) <= max_per_pos:
            return words
        return tuple(words[i] for i in np.sort(rng.choice(len(words), max_per_pos, replace=False)))

    return Vocabulary(pick(vocab.nouns), pick(vocab.adjectives),
                      f"{vocab.source}, subsampled to {max_per_pos} per part of speech (seed {seed})", vocab.location)
