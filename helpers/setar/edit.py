r"""SeTAR's edit: drop the *smallest* singular components of chosen MLP up-projections.

Paper: Li, Lyu, Wang, Xiao, et al. *SeTAR: Out-of-Distribution Detection with Selective Low-Rank Approximation*,
NeurIPS 2024. Reference code: ``X1AOX1A/SeTAR``, ``src/svd_ood`` (``model_hub.py``: ``apply_svd_prune``;
``searchers.py``: the greedy search; ``loss.py``: the LoCoOp objective).

For a block's MLP up-projection $W_{up} \in \mathbb R^{d_{out} \times d_{in}}$ (open_clip ``mlp.c_fc``) with SVD
$W = U \Sigma V^\top$ and singular values $\sigma_1 \ge \dots \ge \sigma_n$, $n = \min(d_{out}, d_{in})$, a ratio
$\rho$ removes the $r = \mathrm{round}(\rho\, n)$ smallest components:

.. math::

    W' = W - \sum_{i = n - r + 1}^{n} \sigma_i u_i v_i^\top = \sum_{i \le n - r} \sigma_i u_i v_i^\top .

An edit is a dict ``{(tower, block): ratio}`` with ``tower`` ``"visual"`` or ``"text"``; :func:`setar_model`
applies it as a derived model (:func:`helpers.models.derive`, id ``<parent>+setar:<hash>``, so its features are
cached like any model's), leaving the parent untouched — the edit is reverted by using the parent. SVDs are
computed in float64 once per matrix (:func:`svd_of`) and reused for every ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..models import LoadedModel, derive

TOWERS = ("visual", "text")
RATIOS = tuple(round(0.05 * i, 2) for i in range(9))  # 0, 0.05, ..., 0.40
# The published configuration for CLIP ViT-B/16 on ImageNet-1k (REFERENCE.md), as an edit
PUBLISHED_B16 = {**{("visual", b): r for b, r in {11: 0.15, 10: 0.15, 3: 0.05, 0: 0.15}.items()},
                 **{("text", b): r for b, r in {6: 0.25, 5: 0.10, 4: 0.20, 3: 0.05, 2: 0.05, 0: 0.20}.items()}}


def param_name(tower: str, block: int) -> str:
    """The parameter name of a block's MLP up-projection in an open_clip ``CLIP``."""
    if tower not in TOWERS:
        raise ValueError(f"tower must be one of {TOWERS}, not {tower!r}")
    prefix = "visual.transformer" if tower == "visual" else "transformer"
    return f"{prefix}.resblocks.{block}.mlp.c_fc.weight"


def n_blocks(model: torch.nn.Module, tower: str) -> int:
    return len((model.visual.transformer if tower == "visual" else model.transformer).resblocks)


def dropped_rank(shape, ratio: float) -> int:
    """``round(ratio · min(d_out, d_in))``: how many of the smallest components a ratio removes."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must lie in [0, 1), not {ratio}")
    return int(round(ratio * min(shape)))


@dataclass
class SVD:
    """``W = U diag(S) Vh`` in float64 (singular values descending) and the weight's dtype."""

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor
    weight: torch.Tensor  # the original weight, unchanged

    def minor(self, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The dropped part as two factors ``(B (d_out, r), A (r, d_in))`` with ``B @ A`` = the sum of the ``r``
        smallest components (``√σ`` on each side); empty factors for ``r = 0``."""
        r = dropped_rank(self.weight.shape, ratio)
        k = len(self.S) - r
        root = self.S[k:].sqrt()
        return self.U[:, k:] * root, root[:, None] * self.Vh[k:]

    def edited(self, ratio: float) -> torch.Tensor:
        """``W'``: the weight without its ``r`` smallest components (the weight itself for ``r = 0``)."""
        if dropped_rank(self.weight.shape, ratio) == 0:
            return self.weight
        b, a = self.minor(ratio)
        return (self.weight.double() - b @ a).to(self.weight.dtype)


def svd_of(model: torch.nn.Module, tower: str, block: int) -> SVD:
    w = dict(model.named_parameters())[param_name(tower, block)].detach()
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    return SVD(u, s, vh, w)


def setar_model(loaded: LoadedModel, edit: dict, svds: dict | None = None) -> LoadedModel:
    """``loaded`` with the edit ``{(tower, block): ratio}`` applied, as a derived model (ratio-0 entries are
    ignored). ``svds`` (``{(tower, block): SVD}``) reuses decompositions; missing ones are computed."""
    svds = svds or {}
    weights = {}
    for (tower, block), ratio in sorted(edit.items()):
        if ratio and not 0 <= block < n_blocks(loaded.model, tower):
            raise ValueError(f"the edit sets {tower} block {block}, but {loaded.model_id} has "
                             f"{n_blocks(loaded.model, tower)} {tower} blocks: an edit found for one architecture "
                             f"(such as the published ViT-B-16 edit, use_published_edit=True or "
                             f"ft_from_published_edit=True) applies only to a model with that many blocks")
        if ratio:
            svd = svds.get((tower, block)) or svd_of(loaded.model, tower, block)
            weights[param_name(tower, block)] = svd.edited(ratio)
    if not weights:
        return loaded
    readable = {f"{t}.{b}": r for (t, b), r in sorted(edit.items()) if r}
    return derive(loaded, "setar", weights=weights, info={"setar": readable})


# Published ImageNet-1k results of SeTAR with CLIP ViT-B/16 (FPR95 / AUROC in %, ID-positive FPR95), REFERENCE.md
PUBLISHED = [
    {"method": f"SeTAR ({score})", "backbone": "ViT-B-16", "source": "SeTAR paper (Li et al. 2024)", "ood": o,
     "fpr95": f, "auroc": a}
    for score, rows in [("MCM", {"inaturalist": (26.92, 94.67), "sun": (35.57, 92.79), "places": (42.64, 90.16),
                                 "textures": (55.83, 86.58), "average": (40.24, 91.05)}),
                        ("GL-MCM", {"inaturalist": (13.36, 96.92), "sun": (28.17, 93.36), "places": (36.80, 90.40),
                                    "textures": (54.17, 84.59), "average": (33.12, 91.32)})]
    for o, (f, a) in rows.items()
]


def edit_table(edits: dict, model) -> pd.DataFrame:
    """Edits side by side: one row per edit (e.g. per split seed), one column per ``(tower, block)`` in search
    order, the selected ratio (0 where the block is left as is)."""
    cols = [(t, b) for t in TOWERS for b in reversed(range(n_blocks(model, t)))]
    table = pd.DataFrame([[e.get(c, 0.0) for c in cols] for e in edits.values()], index=list(edits),
                         columns=[f"{t} {b}" for t, b in cols])
    return table.rename_axis("split seed")
