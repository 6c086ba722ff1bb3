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
ImageNet script ``scripts/eval_imagenet_ood_detection.sh`` (the default here), 1.0 the argparse default and
what SeTAR's GL-MCM baseline uses.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from .mcm import T_MCM, mcm

LAMBDA_IMAGENET = 0.5  # scripts/eval_imagenet_ood_detection.sh
LAMBDA_SETAR = 1.0  # argparse default; SeTAR's re-run

# Published ImageNet-1k results (FPR95 / AUROC in %, ID-positive FPR95), REFERENCE.md.
PUBLISHED = [
    {"method": "GL-MCM (λ=1)", "backbone": "ViT-B-16", "source": "SeTAR re-run (λ=1)", "ood": o, "fpr95": f, "auroc": a}
    for o, (f, a) in {"inaturalist": (15.34, 96.62), "sun": (30.65, 93.01), "places": (37.76, 90.07),
                      "textures": (57.41, 83.73), "average": (35.29, 90.86)}.items()
]


def local_mcm(local_cos: np.ndarray, T: float = T_MCM) -> np.ndarray:
    """L-MCM (N,): the largest class probability over all patches; ``local_cos`` is (N, P, K)."""
    z = np.asarray(local_cos, dtype=np.float64) / T
    # max_k softmax_k = exp(max_k z - logsumexp z), per patch; then the max over patches
    return np.exp(z.max(-1) - logsumexp(z, axis=-1)).max(-1)


def glmcm(global_cos: np.ndarray, local_cos: np.ndarray, T: float = T_MCM,
          lam: float = LAMBDA_IMAGENET) -> np.ndarray:
    """GL-MCM (N,) from global cosines (N, K) and patch cosines (N, P, K)."""
    return mcm(global_cos, T) + lam * local_mcm(local_cos, T)


def local_mcm_from_features(local: np.ndarray, text: np.ndarray, T: float = T_MCM, chunk: int = 256) -> np.ndarray:
    """:func:`local_mcm` of normalised patch embeddings (N, P, D) (float16 is fine) against text (K, D),
    ``chunk`` images at a time (the (N, P, K) cosines of ImageNet do not fit in memory)."""
    text = np.asarray(text, dtype=np.float32)
    if local is None or np.ndim(local) != 3 or local.shape[-1] != text.shape[-1]:
        raise ValueError(f"local must be (N, P, D) and text (K, D) with the same D; got {np.shape(local)}, {text.shape}. "
                         f"Fix: extract features with kinds including 'local'.")
    return np.concatenate([local_mcm(np.asarray(local[i:i + chunk], np.float32) @ text.T, T)
                           for i in range(0, len(local), chunk)])


def glmcm_from_features(image: np.ndarray, local: np.ndarray, text: np.ndarray, T: float = T_MCM,
                        lam: float = LAMBDA_IMAGENET) -> np.ndarray:
    """:func:`glmcm` from normalised global (N, D) and patch (N, P, D) embeddings and text (K, D)."""
    text = np.asarray(text, dtype=np.float32)
    return mcm(np.asarray(image, np.float32) @ text.T, T) + lam * local_mcm_from_features(local, text, T)
