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

Deviations: the reference shuffles with ``torch.randperm`` on CUDA (seed 0); here ``numpy``'s
``default_rng(seed).permutation``, so the grouping (not the rule) differs. As in the reference, the last
``M mod G`` negatives of the list (nouns then adjectives, each lowest quantile first) are dropped before
shuffling. The word lists are every WordNet lemma, not the reference's pre-extracted files (see
:mod:`helpers.words`), so more negatives are mined.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
from scipy.special import logsumexp

PERCENTILE = 0.95  # pencentile
RATIO = 0.15  # neg_topk
N_GROUPS = 100  # ngroup
T_NEGLABEL = 0.01  # 100·cos at t = 1
SEED = 0
ID_TEMPLATES = ("the nice {}",)  # prompt_idx_pos = 85 in the reference's template list
NOUN_TEMPLATE = "the nice {}"
ADJ_TEMPLATE = "This is a {} photo"
MINING_CODE_VERSION = 1

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


def neglabel(pos_cos: np.ndarray, neg_cos: np.ndarray, T: float = T_NEGLABEL, n_groups: int = N_GROUPS,
             seed: int = SEED) -> np.ndarray:
    """NegLabel score (N,) from cosines to the ID labels ``pos_cos`` (N, K) and to the negatives ``neg_cos`` (N, M).

    ``n_groups=1`` uses all negatives in one softmax (as CMA does). Higher = more ID, in (0, 1].
    """
    pos = np.asarray(pos_cos, dtype=np.float64) / T
    neg = np.asarray(neg_cos, dtype=np.float64) / T
    if pos.ndim != 2 or neg.ndim != 2 or len(pos) != len(neg):
        raise ValueError(f"pos_cos must be (N, K) and neg_cos (N, M) with the same N; got {pos.shape}, {neg.shape}")
    groups = group_indices(neg.shape[1], n_groups, seed)
    lse_pos = logsumexp(pos, axis=1)
    # per group: log of the ID mass = lse(pos) - lse([pos, neg_g]); computed in log space (T = 0.01 overflows exp)
    lse_neg = np.stack([logsumexp(neg[:, g], axis=1) for g in groups], axis=1)  # (N, G)
    return np.exp(lse_pos[:, None] - np.logaddexp(lse_pos[:, None], lse_neg)).mean(1)


def neglabel_from_features(image: np.ndarray, id_text: np.ndarray, neg_text: np.ndarray, T: float = T_NEGLABEL,
                           n_groups: int = N_GROUPS, seed: int = SEED, chunk: int = 4096) -> np.ndarray:
    """:func:`neglabel` of normalised image embeddings (N, D) against ID (K, D) and negative (M, D) text
    embeddings, in chunks of images (an ImageNet-sized (N, M) cosine matrix does not fit in memory)."""
    image = np.asarray(image, dtype=np.float32)
    id_text, neg_text = np.asarray(id_text, np.float32), np.asarray(neg_text, np.float32)
    return np.concatenate([neglabel(image[i:i + chunk] @ id_text.T, image[i:i + chunk] @ neg_text.T, T, n_groups,
                                    seed) for i in range(0, len(image), chunk)])


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


def _encode(loaded, words: list[str], template: str, width: int, batch_size: int, progress: bool,
            desc: str) -> np.ndarray:
    from tqdm.auto import tqdm

    from ..features import text_features

    step = 5 * batch_size  # progress in slices; candidate embeddings are not cached one by one (too many)
    parts = [text_features(loaded, words[i:i + step], [template], batch_size=batch_size, use_cache=False)
             for i in tqdm(range(0, len(words), step), desc=desc, disable=not progress, mininterval=2)]
    return np.concatenate(parts) if parts else np.zeros((0, width), np.float32)


def mine_negative_labels(loaded, class_names: list[str], vocabulary, *, id_templates=ID_TEMPLATES,
                         noun_template: str = NOUN_TEMPLATE, adj_template: str = ADJ_TEMPLATE,
                         percentile: float = PERCENTILE, ratio: float = RATIO, batch_size: int = 1000,
                         use_cache: bool = True, progress: bool = True) -> NegativeLabels:
    """NegLabel's negative labels for the ID ``class_names`` under ``loaded`` (a :class:`LoadedModel`).

    ``vocabulary`` is a :class:`helpers.words.Vocabulary`. The result is cached under
    ``<cache>/neglabel/``, keyed by the model, the words, the prompts, the ID labels and the selection rule.
    """
    from ..features import text_features
    from ..io import atomic_path, sha256_json
    from ..paths import cache_dir

    if not vocabulary.nouns and not vocabulary.adjectives:
        raise ValueError(f"the vocabulary ({vocabulary.describe()}) is empty")
    id_emb = text_features(loaded, list(class_names), list(id_templates))
    key = {"model_id": loaded.model_id, "checkpoint_sha256": loaded.checkpoint_sha256,
           "nouns": sha256_json(vocabulary.nouns), "adjectives": sha256_json(vocabulary.adjectives),
           "class_names": list(class_names), "id_templates": list(id_templates), "noun_template": noun_template,
           "adj_template": adj_template, "percentile": percentile, "ratio": ratio, "code": MINING_CODE_VERSION}
    slug = loaded.model_id.replace("/", "_").replace(":", "-")
    path = cache_dir() / "neglabel" / f"{slug}-{sha256_json(key)[:20]}.npz"
    settings = {k: key[k] for k in ("id_templates", "noun_template", "adj_template", "percentile", "ratio")}
    if use_cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if json.loads(str(z["key"])) == key:
                    return NegativeLabels(
                        words=[str(w) for w in z["words"]], is_adjective=z["is_adjective"],
                        embeddings=z["embeddings"], quantiles=z["quantiles"], id_embeddings=id_emb,
                        candidate_quantiles={"noun": z["cq_noun"], "adj": z["cq_adj"]},
                        source=vocabulary.describe(), settings=settings, from_cache=True)
        except (OSError, ValueError, KeyError, EOFError):
            pass  # stale or damaged: mine again
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
    res = NegativeLabels(words, np.concatenate(adj), np.concatenate(embs).astype(np.float32),
                         np.concatenate(qs), id_emb, cand, vocabulary.describe(), settings)
    with atomic_path(path, ".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, key=json.dumps(key), words=np.array(res.words, dtype=str), is_adjective=res.is_adjective,
                     embeddings=res.embeddings, quantiles=res.quantiles, cq_noun=cand["noun"], cq_adj=cand["adj"])
    return res
