"""OOD scores, one module per family. Every score is a pure function: arrays in, one number per image out,
**higher = more in-distribution**.

- :mod:`helpers.scores.mcm`  MCM and the classic logit scores (MSP, max-logit, energy, entropy, variance)
  on CLIP's cosine similarities.
"""

from .mcm import cosine_logits, energy, entropy_score, max_logit, mcm, msp, variance_score

__all__ = ["cosine_logits", "energy", "entropy_score", "max_logit", "mcm", "msp", "variance_score"]
