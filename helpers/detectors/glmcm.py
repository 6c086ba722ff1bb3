r"""GL-MCM: global MCM plus the best-matching *local* (patch) MCM.

Paper: Miyai, Yu, Irie, Aizawa. *Zero-Shot In-Distribution Detection in Multi-Object Settings Using
Vision-Language Foundation Models* (GL-MCM), 2023. Reference code: ``AtsuMiyai/GL-MCM``, scores in
``utils/detection_util.py`` (``get_ood_scores_clip``, which negates them: lower = ID there), local features in
``clip/model.py``; here higher = more ID.

With $s_k = \cos(\hat x, \hat t_k)$ the global cosines and $s_{p,k} = \cos(\hat l_p, \hat t_k)$ those of patch $p$:

.. math::

    \mathrm{GL\text{-}MCM}(x) = \max_k \operatorname{softmax}_k(s/T)
        + \lambda \max_{p} \max_k \operatorname{softmax}_k(s_{p,\cdot}/T) .

The second term alone is L-MCM. The local embeddings $\hat l_p$ are taken as the reference code takes them
(:func:`helpers.features.value_path`): in the last block the attention is replaced by its value path,
$v = h + W_o(W_v\,\mathrm{LN}_1(h) + b_v) + b_o$, then $v \leftarrow v + \mathrm{MLP}(\mathrm{LN}_2(v))$, then
$\mathrm{LN}_{post}$ and the projection, normalised; the class token is dropped.

Hyper-parameters: temperature $T = 1$ (``--T``, as MCM); $\lambda$ (``--lambda_local``): **0.5** in the
ImageNet script ``scripts/eval_imagenet_ood_detection.sh`` (the default here); 1.0 is the argparse default and
what SeTAR's and LoCoOp's GL-MCM evaluations use.
"""

from __future__ import annotations

import torch

from .base import register
from .mcm import T_MCM, ZeroShotDetector, mcm_score

LAMBDA_IMAGENET = 0.5  # scripts/eval_imagenet_ood_detection.sh

# Published ImageNet-1k results (FPR95 / AUROC in %, ID-positive FPR95), REFERENCE.md.
PUBLISHED = [
    {"method": "GL-MCM (λ=1)", "backbone": "ViT-B-16", "source": "SeTAR re-run (λ=1)", "ood": o, "fpr95": f, "auroc": a}
    for o, (f, a) in {"inaturalist": (15.34, 96.62), "sun": (30.65, 93.01), "places": (37.76, 90.07),
                      "textures": (57.41, 83.73), "average": (35.29, 90.86)}.items()
]


def local_mcm_score(local_cos: torch.Tensor, T: float) -> torch.Tensor:
    """L-MCM (N,): the largest class probability over all patches; ``local_cos`` is (N, P, K)."""
    return torch.softmax(local_cos / T, dim=-1).amax(-1).amax(-1)


@register
class LMCM(ZeroShotDetector):
    """L-MCM: the best patch-level MCM alone (module docstring)."""

    name, title = "l_mcm", "L-MCM"
    needs = ("local",)

    def score(self, local: torch.Tensor, **_) -> torch.Tensor:
        return local_mcm_score(local @ self.text.to(local.dtype).T, self.T)

    def logits(self, **_):
        return None


@register
class GLMCM(ZeroShotDetector):
    """GL-MCM = MCM + λ · L-MCM (module docstring)."""

    name, title = "gl_mcm", "GL-MCM"
    needs = ("image", "local")
    shown = ("lam", "T")
    symbols = {"lam": "λ"}

    def __init__(self, T: float | str = T_MCM, lam: float = LAMBDA_IMAGENET, prompts: str | list[str] = "single"):
        self._init(T=T, prompts=prompts, lam=lam)

    def score(self, image: torch.Tensor, local: torch.Tensor, **_) -> torch.Tensor:
        text = self.text.to(image.dtype)
        return mcm_score(image @ text.T, self.T) + self.params["lam"] * local_mcm_score(local @ text.T, self.T)
