r"""NegLabel: the ID share of a softmax over ID labels *and* thousands of mined negative labels.

Paper: Jiang, Liu, Fang, Chen, Liu, Zheng, Han. *Negative Label Guided OOD Detection with Pretrained
Vision-Language Models*, ICLR 2024. Reference code: ``XueJiang16/NegLabel``: mining in
``mmcls/models/classifiers/multi_modal.py`` (``CLIPScalableClassifier``), grouping and score in
``mmcls/models/ood/clip_ood.py`` (``ScalableClassifier.grouping``), settings in ``custom_config/clip.py``.

**Mining.** Candidate words are WordNet nouns, prompted ``"the nice {}"``, and adjectives, prompted
``"This is a {} photo"`` (:mod:`helpers.words`). With $\hat t_k$ the ID class embeddings (prompt
``"the nice {}"`` too) and $\hat n_j$ a candidate's embedding, NegLabel keeps the candidates *least* similar to
every ID class: per candidate the $\eta$-quantile $q_j = Q_\eta\{\cos(\hat n_j, \hat t_k)\}_k$, and the
$\lfloor r\,M_{pos}\rfloor$ candidates with the lowest $q_j$, separately for nouns and adjectives.

**Score.** With $s_k = \cos(\hat x, \hat t_k)$ for the $K$ ID labels and $\tilde s_j = \cos(\hat x, \hat n_j)$ for
the negatives of group $g$ (the negatives are shuffled and split into $G$ equal groups),

.. math::

    S(x) = \frac{1}{G}\sum_{g=1}^{G} \frac{\sum_{k=1}^{K} e^{s_k/T}}
        {\sum_{k=1}^{K} e^{s_k/T} + \sum_{j\in g} e^{\tilde s_j/T}} .

An ID image matches an ID label better than any negative label, so most of the softmax mass stays on the ID
labels; an OOD image finds a negative that fits it better.

Hyper-parameters (published defaults, ``custom_config/clip.py``): percentile $\eta = 0.95$
(``pencentile``), ratio $r = 0.15$ (``neg_topk``: "15% -> 10000" negatives for ImageNet), $G = 100$ groups
(``ngroup``), temperature $T = 0.01$ on cosines (the code divides ``100·cos`` by ``t = 1``), shuffle seed 0.

``n_groups = 1`` puts all negatives in one softmax (the softmax share above with $G = 1$, as CMA scores it). The
reference's own ``ngroup=1`` branch differs: it sums the raw ID logits without a softmax; that variant is not
implemented here.

Deviations: the reference shuffles with ``torch.randperm`` on CUDA (seed 0); here ``numpy``'s
``default_rng(seed).permutation``, so the grouping (not the rule) differs. As in the reference, the last
``M mod G`` negatives of the list (nouns then adjectives, each lowest quantile first) are dropped before
shuffling. The word lists are every WordNet lemma, not the reference's pre-extracted files (see
:mod:`helpers.words`), so more negatives are mined.

**Whose negatives.** ``mining="own"`` (default) mines the words with the model being scored. A fine-tuned model
can instead keep one fixed list: ``mining="fixed"`` mines the words once with the model named ``mined_by``
(the zero-shot model) and re-encodes exactly those words, with their prompts, by the scored model's text tower.
That is what CMA's official code does (``ma-kjh/CMA-OoDD``: one list of 10,000 words, re-encoded by each
fine-tuned text tower); the two differ when fine-tuning moves the text tower, and notebook 06 reports both.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from ..cache import cached_arrays, code_hash
from ..features import text_features
from ..io import sha256_json
from ..prompts import get_prompts
from .base import register
from .mcm import ZeroShotDetector

PERCENTILE = 0.95  # pencentile
RATIO = 0.15  # neg_topk
N_GROUPS = 100  # ngroup
T_NEGLABEL = 0.01  # 100·cos at t = 1
SEED = 0
NOUN_TEMPLATE = "the nice {}"
ADJ_TEMPLATE = "This is a {} photo"

# Published ImageNet-1k results (FPR95 / AUROC in %, ID-positive FPR95), REFERENCE.md.
PUBLISHED = [
    {"method": "NegLabel", "backbone": "ViT-B-16", "source": "NegLabel paper (Jiang et al. 2024)", "ood": o,
     "fpr95": f, "auroc": a}
    for o, (f, a) in {"inaturalist": (1.91, 99.49), "sun": (20.53, 95.49), "places": (35.59, 91.64),
                      "textures": (43.56, 90.22), "average": (25.40, 94.21)}.items()
]


# ------------------------------------------------------------------------------------------ scoring
def group_indices(n_negatives: int, n_groups: int = N_GROUPS, seed: int = SEED) -> np.ndarray:
    """Column indices (G, M // G) of the negatives in each group.

    The last ``M mod G`` negatives are dropped, the rest shuffled with ``seed`` and cut into ``G`` groups.
    """
    if n_groups < 1:
        raise ValueError(f"n_groups must be >= 1, not {n_groups}")
    if n_negatives < n_groups:
        raise ValueError(f"NegLabel needs at least n_groups={n_groups} negative labels, got {n_negatives}. "
                         f"Fix: lower n_groups, or mine more words (larger word list or ratio).")
    kept = n_negatives - n_negatives % n_groups
    order = np.arange(kept) if n_groups == 1 else np.random.default_rng(seed).permutation(kept)
    return order.reshape(n_groups, -1)


def neglabel_score(pos_cos: torch.Tensor, neg_cos: torch.Tensor, T: float, groups: torch.Tensor) -> torch.Tensor:
    """NegLabel score (N,) from cosines to the ID labels ``pos_cos`` (N, K) and to the negatives ``neg_cos``
    (N, M), with the negatives of each group given by ``groups`` (G, M // G). In (0, 1]; higher = more ID.

    Computed in log space (at T = 0.01 ``exp`` overflows): per group, log ID mass = lse(pos) - lse([pos, neg_g]).
    """
    lse_pos = torch.logsumexp(pos_cos / T, dim=-1, keepdim=True)  # (N, 1)
    lse_neg = torch.logsumexp(neg_cos[:, groups] / T, dim=-1)  # (N, G)
    return torch.exp(lse_pos - torch.logaddexp(lse_pos, lse_neg)).mean(-1)


# ------------------------------------------------------------------------------------------- mining
def negative_quantiles(candidates: np.ndarray, id_text: np.ndarray, percentile: float = PERCENTILE,
                       chunk: int = 8192) -> np.ndarray:
    """Per candidate (M, D) the ``percentile``-quantile (linear interpolation) of its cosines to the ID
    labels (K, D); (M,). Low = unlike every ID class."""
    if not 0.0 <= percentile <= 1.0:
        raise ValueError(f"percentile must be in [0, 1], not {percentile}")
    candidates, id_text = np.asarray(candidates, np.float32), np.asarray(id_text, np.float32)
    return np.concatenate([np.quantile(candidates[i:i + chunk] @ id_text.T, percentile, axis=1)
                           for i in range(0, len(candidates), chunk)]) if len(candidates) else np.zeros(0)


def select_negatives(quantiles: np.ndarray, ratio: float = RATIO) -> np.ndarray:
    """Indices of the ``floor(ratio · M)`` candidates with the lowest quantile, lowest first (stable order)."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], not {ratio}")
    quantiles = np.asarray(quantiles)
    return np.argsort(quantiles, kind="stable")[: int(len(quantiles) * ratio)]


@dataclass
class NegativeLabels:
    """Mined negative labels: the selected words (nouns first, then adjectives, each lowest quantile first)."""

    words: list[str]
    is_adjective: np.ndarray  # (M,) bool
    embeddings: np.ndarray  # (M, D) normalised text embeddings of the prompted words
    quantiles: np.ndarray  # (M,) their percentile-cosine to the ID labels
    id_embeddings: np.ndarray  # (K, D) the ID labels with the ID prompts
    candidate_quantiles: dict[str, np.ndarray]  # "noun" / "adj": (M_pos,) quantiles of all candidates
    source: str  # where the candidate words came from (helpers.words.Vocabulary.describe())
    settings: dict = field(default_factory=dict)
    from_cache: bool = False

    def __len__(self) -> int:
        return len(self.words)

    def summary(self) -> pd.DataFrame:
        """Per part of speech: candidates, selected, median quantile of all candidates, largest kept."""
        rows = []
        for pos, q in self.candidate_quantiles.items():
            kept = self.quantiles[self.is_adjective == (pos == "adj")]
            if len(q):
                rows.append({"part of speech": pos, "candidates": len(q), "selected": len(kept),
                             "median 0.95-quantile (all)": float(np.median(q)),
                             "largest 0.95-quantile kept": float(kept.max()) if len(kept) else np.nan})
        return pd.DataFrame(rows)

    def examples(self, n: int = 12) -> pd.DataFrame:
        """The first ``n`` nouns and adjectives (the least like any ID class)."""
        nouns = [w for w, a in zip(self.words, self.is_adjective) if not a]
        adjs = [w for w, a in zip(self.words, self.is_adjective) if a]
        return pd.DataFrame({"nouns least like any ID class": (nouns + [""] * n)[:n],
                             "adjectives least like any ID class": (adjs + [""] * n)[:n]})


_ENCODED: dict = {}  # the last few candidate encodings in this process (two NegLabel variants on one model)


def _encode(loaded, words: list[str], template: str, width: int, batch_size: int, progress: bool,
            desc: str) -> np.ndarray:
    from tqdm.auto import tqdm

    memo = (loaded.text_id, loaded.checkpoint_sha256, template, sha256_json(words))
    if memo in _ENCODED:
        return _ENCODED[memo]
    step = 5 * batch_size  # progress in slices; candidate embeddings are not cached on disk (too many)
    parts = [text_features(loaded, words[i:i + step], [template], batch_size=batch_size, use_cache=False)
             for i in tqdm(range(0, len(words), step), desc=desc, disable=not progress, mininterval=2)]
    out = np.concatenate(parts) if parts else np.zeros((0, width), np.float32)
    while len(_ENCODED) >= 2:  # nouns and adjectives of one model; WordNet: 70k words x the width each
        _ENCODED.pop(next(iter(_ENCODED)))
    _ENCODED[memo] = out
    return out


def mine_negative_labels(loaded, class_names: list[str], vocabulary, *, id_templates=("the nice {}",),
                         noun_template: str = NOUN_TEMPLATE, adj_template: str = ADJ_TEMPLATE,
                         percentile: float = PERCENTILE, ratio: float = RATIO, batch_size: int = 1000,
                         use_cache: bool = True, progress: bool = True) -> NegativeLabels:
    """NegLabel's negative labels for the ID ``class_names`` under ``loaded`` (a :class:`LoadedModel`).

    ``vocabulary`` is a :class:`helpers.words.Vocabulary`. The result is cached under
    ``<cache>/neglabel/`` (:func:`helpers.cache.cached_arrays`), keyed by the model, the words, the prompts, the ID
    labels, the selection rule and the code, and checked against the sha256 recorded with it: a damaged cache entry
    is reported and mined again.
    """
    if not vocabulary.nouns and not vocabulary.adjectives:
        raise ValueError(f"the vocabulary ({vocabulary.describe()}) is empty")
    id_emb = text_features(loaded, list(class_names), list(id_templates))
    key = {"model_id": loaded.text_id, "checkpoint_sha256": loaded.checkpoint_sha256,
           "nouns": sha256_json(vocabulary.nouns), "adjectives": sha256_json(vocabulary.adjectives),
           "class_names": list(class_names), "id_templates": list(id_templates), "noun_template": noun_template,
           "adj_template": adj_template, "percentile": percentile, "ratio": ratio,
           "code": code_hash(mine_negative_labels, _mine, negative_quantiles, select_negatives, _encode,
                             text_features)}
    settings = {k: key[k] for k in ("id_templates", "noun_template", "adj_template", "percentile", "ratio")}
    z, _, hit = cached_arrays(
        "neglabel", loaded.text_id, key,
        lambda: (_mine(loaded, vocabulary, id_emb, noun_template, adj_template, percentile, ratio, batch_size,
                       progress), {}), what="NegLabel cache", use_cache=use_cache)
    return NegativeLabels(
        words=[str(w) for w in z["words"]], is_adjective=z["is_adjective"], embeddings=z["embeddings"],
        quantiles=z["quantiles"], id_embeddings=id_emb, candidate_quantiles={"noun": z["cq_noun"], "adj": z["cq_adj"]},
        source=vocabulary.describe(), settings=settings, from_cache=hit)


def _mine(loaded, vocabulary, id_emb, noun_template, adj_template, percentile, ratio, batch_size,
          progress) -> dict[str, np.ndarray]:
    """The mined negatives as the arrays :func:`mine_negative_labels` caches."""
    words, adj, embs, qs, cand = [], [], [], [], {}
    for pos, template, cands in (("noun", noun_template, vocabulary.nouns), ("adj", adj_template, vocabulary.adjectives)):
        emb = _encode(loaded, list(cands), template, id_emb.shape[1], batch_size, progress, f"NegLabel {pos}s")
        q = negative_quantiles(emb, id_emb, percentile)
        keep = select_negatives(q, ratio)
        words += [cands[i] for i in keep]
        adj.append(np.full(len(keep), pos == "adj"))
        embs.append(emb[keep])
        qs.append(q[keep])
        cand[pos] = q
    return {"words": np.array(words, dtype=str), "is_adjective": np.concatenate(adj),
            "embeddings": np.concatenate(embs).astype(np.float32), "quantiles": np.concatenate(qs),
            "cq_noun": cand["noun"], "cq_adj": cand["adj"]}


_MINERS: dict = {}  # models loaded by name to mine a fixed list, one per (name, device)


def miner_of(model, mined_by: str | None):
    """The model that mines a fixed list for ``model``: ``model`` itself when it is the one named ``mined_by`` (or
    when ``mined_by`` is None and ``model`` is not derived from another), else ``mined_by`` loaded by name
    (:func:`helpers.models.load_model`, once per process)."""
    if mined_by is None:
        if model.parent is None:
            return model
        raise ValueError(f"NegLabel mining='fixed' on the derived model {model.name!r} needs mined_by=<the name of "
                         "the model that mines the words>, e.g. the zero-shot model's name ('ViT-B-16/openai', "
                         "'pocket:small')")
    if mined_by in (model.name, model.model_id):
        return model
    key = (mined_by, str(model.device))
    if key not in _MINERS:
        from ..models import load_model

        _MINERS.clear()  # one at a time: a paper-size model is large
        _MINERS[key] = load_model(mined_by, device=model.device)
    return _MINERS[key]


def reencode(negatives: NegativeLabels, model, class_names: list[str], batch_size: int = 1000) -> NegativeLabels:
    """The same words as ``negatives``, in the same order, encoded by ``model``'s text tower with the same prompts
    (nouns with the noun template, adjectives with the adjective one; the ID labels with the ID prompts); their
    quantiles recomputed against the new ID embeddings. The candidates' quantiles stay the miner's."""
    s = negatives.settings
    id_emb = text_features(model, class_names, list(s["id_templates"]))
    adj = np.asarray(negatives.is_adjective, bool)
    emb = np.zeros((len(negatives), id_emb.shape[1]), np.float32)
    for mask, template in ((~adj, s["noun_template"]), (adj, s["adj_template"])):
        words = [w for w, m in zip(negatives.words, mask) if m]
        if words:
            emb[mask] = _encode(model, words, template, id_emb.shape[1], batch_size, False, "NegLabel re-encode")
    return replace(negatives, embeddings=emb, id_embeddings=id_emb,
                   quantiles=negative_quantiles(emb, id_emb, s["percentile"]), from_cache=False)


# ------------------------------------------------------------------------------------------ detector
@register
class NegLabel(ZeroShotDetector):
    """NegLabel (module docstring). ``fit`` mines the negatives from the candidate words (cached):
    ``words`` (``"auto"``: nltk's WordNet, then Debian's ``wordnet-base``, then ``word_list``; or one source by
    name, see :mod:`helpers.words`), ``word_list`` a file or list of words, ``max_words`` a seeded cap on the
    candidates per part of speech (None keeps all). ``prompts`` are the ID labels' prompts (``"nice"``:
    ``the nice {}``, as published). :attr:`negatives` holds the mined labels after fitting."""

    name, title = "neglabel", "NegLabel"
    shown = ("T",)
    hidden = ("words", "word_list", "max_words", "mined_by")

    def __init__(self, T: float | str = T_NEGLABEL, n_groups: int = N_GROUPS, seed: int = SEED,
                 percentile: float = PERCENTILE, ratio: float = RATIO, prompts: str | list[str] = "nice",
                 words: str = "auto", word_list=None, max_words: int | None = None,
                 noun_template: str = NOUN_TEMPLATE, adj_template: str = ADJ_TEMPLATE, mining: str = "own",
                 mined_by: str | None = None):
        if mining not in ("own", "fixed"):
            raise ValueError(f"mining must be 'own' (mined by the scored model) or 'fixed' (mined once by the "
                             f"model `mined_by`, re-encoded by the scored model), not {mining!r}")
        self._init(T=T, prompts=prompts, n_groups=n_groups, seed=seed, percentile=percentile, ratio=ratio,
                         words=words, word_list=word_list, max_words=max_words, noun_template=noun_template,
                         adj_template=adj_template, mining=mining, mined_by=mined_by)
        self.negatives: NegativeLabels | None = None
        self.neg: torch.Tensor | None = None
        self.groups: torch.Tensor | None = None

    def fit(self, model, class_names, train=None):
        from ..words import load_words, subsample

        super().fit(model, class_names, train)
        p = self.params
        vocab = subsample(load_words(p["words"], p["word_list"]), p["max_words"])
        miner = model if p["mining"] == "own" else miner_of(model, p["mined_by"])
        self.negatives = mine_negative_labels(miner, list(class_names), vocab, id_templates=get_prompts(p["prompts"]),
                                              noun_template=p["noun_template"], adj_template=p["adj_template"],
                                              percentile=p["percentile"], ratio=p["ratio"])
        if miner is not model:
            self.negatives = reencode(self.negatives, model, list(class_names))
        self.resolved["miner"] = miner.model_id
        self.text = torch.as_tensor(self.negatives.id_embeddings, dtype=torch.float64, device=self.device)
        self.neg = torch.as_tensor(self.negatives.embeddings, dtype=torch.float64, device=self.device)
        self.groups = torch.as_tensor(group_indices(len(self.negatives), p["n_groups"], p["seed"]), device=self.device)
        self.resolved["negatives"] = len(self.negatives)
        return self

    def score(self, image: torch.Tensor, **_) -> torch.Tensor:
        return neglabel_score(self.cosines(image), image @ self.neg.to(image.dtype).T, self.T, self.groups)
