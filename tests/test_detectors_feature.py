"""Feature-space and probe-logit detectors: kNN, Mahalanobis / relative Mahalanobis, MSP / energy / L1 on logits.

Every number is checked against an independent computation: a brute-force loop, scipy's distance functions,
the published formula written out, or a hand-worked example. The detectors are fitted on a stand-in training
split (labels and one feature kind), as :func:`helpers.evaluation.evaluate` fits them on ``Features``.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis

from helpers import detectors
from helpers.detectors import fit_mahalanobis, knn_score, l1_score, logit_score


def _train(x, y=None, kind="image"):
    return SimpleNamespace(**{kind: x}, labels=np.zeros(len(x), int) if y is None else y, dataset="train")


def knn(query, bank, k=1, reduction="kth", standardize=False, **kw):
    d = detectors.get("knn", k=k, reduction=reduction, feature="image", standardize=standardize)
    return d.fit(None, ["c"], _train(bank))({"image": query}, **kw)


def class_distances(test, x, y):
    d = detectors.get("mahalanobis").fit(None, [str(c) for c in np.unique(y)], _train(x, y, "preproj"))
    t = torch.as_tensor(test, dtype=torch.float64)
    z, m = t @ d.whiten, d.means @ d.whiten
    return (((z[:, None] - m[None]) ** 2).sum(-1)).numpy()


def maha(test, x, y, relative=False, covariance="pooled"):
    name = "relative_mahalanobis" if relative else "mahalanobis"
    d = detectors.get(name, covariance=covariance).fit(None, [str(c) for c in np.unique(y)], _train(x, y, "preproj"))
    return d({"preproj": test})


def logit_scores(z, T=1.0):
    t = torch.as_tensor(z, dtype=torch.float64)
    return {"MSP": logit_score(t, "msp", T).numpy(), "energy": logit_score(t, "energy", T).numpy(),
            "L1": logit_score(t, "l1").numpy()}


def _blobs(n=300, d=6, c=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    centres = rng.normal(scale=3.0, size=(c, d))
    mix = rng.normal(size=(d, d))  # correlated dimensions, so the covariance matters
    x = centres[y] + rng.normal(size=(n, d)) @ mix
    return x, y


# ------------------------------------------------------------------------------------------------ kNN
def _knn_brute(query, bank, k, reduction):
    out = []
    for q in query:
        sims = sorted((float(np.dot(q, b) / (np.linalg.norm(q) * np.linalg.norm(b))) for b in bank), reverse=True)
        out.append(sims[k - 1] if reduction == "kth" else np.mean(sims[:k]))
    return np.array(out)


@pytest.mark.parametrize("k", [1, 3, 7])
@pytest.mark.parametrize("reduction", ["kth", "mean"])
def test_knn_equals_brute_force(k, reduction):
    rng = np.random.default_rng(1)
    query, bank = rng.normal(size=(25, 8)), rng.normal(size=(40, 8))
    got = knn(query, bank, k, reduction=reduction)
    np.testing.assert_allclose(got, _knn_brute(query, bank, k, reduction), atol=1e-10)


def test_knn_standardised_preproj_is_plps_embed_norm():
    """PLP's published kNN: pre-projection features standardised with the training mean and std, then cosine."""
    rng = np.random.default_rng(11)
    bank, query = rng.normal(2.0, [1, 5, 0.1, 3], size=(30, 4)), rng.normal(size=(9, 4))
    mu, sd = bank.mean(0), bank.std(0, ddof=1)
    d = detectors.get("knn").fit(None, ["c"], _train(bank, kind="preproj"))
    assert (d.params["feature"], d.params["standardize"], d.params["k"]) == ("preproj", True, 1)
    np.testing.assert_allclose(d({"preproj": query}), _knn_brute((query - mu) / sd, (bank - mu) / sd, 1, "kth"),
                               atol=1e-10)
    assert not np.allclose(d({"preproj": query}), _knn_brute(query, bank, 1, "kth"))


def test_knn_hand_worked():
    bank = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    query = np.array([[2.0, 0.0], [1.0, 1.0]])  # cosines: (1, 0, -1) and (.707, .707, -.707)
    np.testing.assert_allclose(knn(query, bank, 1), [1.0, np.sqrt(0.5)], atol=1e-6)
    np.testing.assert_allclose(knn(query, bank, 2), [0.0, np.sqrt(0.5)], atol=1e-6)
    np.testing.assert_allclose(knn(query, bank, 3, reduction="mean"), [0.0, np.sqrt(0.5) / 3], atol=1e-6)


@pytest.mark.parametrize("k", [1, 5])
def test_knn_chunked_equals_unchunked(k):
    rng = np.random.default_rng(2)
    query, bank = rng.normal(size=(203, 16)), rng.normal(size=(517, 16))
    q, b = torch.nn.functional.normalize(torch.as_tensor(query), dim=1), torch.nn.functional.normalize(
        torch.as_tensor(bank), dim=1)
    whole = knn_score(q, b, k, bank_chunk=10_000).numpy()
    for bank_chunk in (1, 13, 100, 517):
        np.testing.assert_allclose(knn_score(q, b, k, bank_chunk=bank_chunk).numpy(), whole, rtol=0, atol=1e-12)
    for chunk in (1, 7, 203):  # the numpy convenience processes queries in chunks
        np.testing.assert_allclose(knn(query, bank, k, chunk=chunk), whole, rtol=0, atol=1e-12)


def test_knn_ranks_like_kth_euclidean_distance():
    """Sun et al.'s score is -(k-th L2 distance) on normalised features: the same ranking as the k-th cosine."""
    rng = np.random.default_rng(3)
    query, bank = rng.normal(size=(50, 5)), rng.normal(size=(60, 5))
    qn = query / np.linalg.norm(query, axis=1, keepdims=True)
    bn = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    dist = np.sort(np.linalg.norm(qn[:, None] - bn[None], axis=2), axis=1)[:, 4]
    np.testing.assert_array_equal(np.argsort(-dist), np.argsort(knn(query, bank, 5)))


def test_knn_bad_input_names_the_problem():
    from helpers.errors import NonFiniteError

    with pytest.raises(ValueError, match="between 1 and the bank size"):
        knn(np.ones((2, 3)), np.ones((4, 3)), k=5)
    with pytest.raises(ValueError, match="cannot score"):
        knn(np.ones((2, 3)), np.ones((4, 5)))
    with pytest.raises(NonFiniteError, match="NaN"):
        knn(np.full((2, 3), np.nan), np.ones((4, 3)))
    with pytest.raises(ValueError, match="reduction"):
        detectors.get("knn", reduction="median")
    with pytest.raises(ValueError, match="training features"):
        detectors.get("knn").fit(None, ["c"], None)


def test_knn_is_differentiable_in_the_query():
    """The scores are torch: a gradient reaches the query features (what notebook 07's attack needs)."""
    bank = np.random.default_rng(0).normal(size=(20, 6))
    d = detectors.get("knn", feature="image", standardize=False, k=3).fit(None, ["c"], _train(bank))
    q = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: d.score(image=x), (q,))


# ---------------------------------------------------------------------------------------- Mahalanobis
def test_mahalanobis_equals_direct_formula():
    x, y = _blobs()
    # the pooled within-class covariance written out, inverted directly, distances from scipy
    mu = np.stack([x[y == c].mean(0) for c in range(3)])
    cov = sum((x[i] - mu[y[i]])[:, None] * (x[i] - mu[y[i]])[None] for i in range(len(x))) / len(x)
    prec = np.linalg.inv(cov)
    mu0 = x.mean(0)
    prec0 = np.linalg.inv((x - mu0).T @ (x - mu0) / len(x))
    test = np.random.default_rng(9).normal(scale=4.0, size=(20, x.shape[1]))
    d = np.array([[scipy_mahalanobis(t, mu[c], prec) ** 2 for c in range(3)] for t in test])
    d0 = np.array([scipy_mahalanobis(t, mu0, prec0) ** 2 for t in test])
    np.testing.assert_allclose(class_distances(test, x, y), d, rtol=1e-8)
    np.testing.assert_allclose(maha(test, x, y), -d.min(1), rtol=1e-8)
    np.testing.assert_allclose(maha(test, x, y, relative=True), -(d - d0[:, None]).min(1), rtol=1e-8)


def test_mahalanobis_class_mean_covariance_is_plps():
    x, y = _blobs(seed=4)
    fit = fit_mahalanobis(x, y, covariance="class_mean")
    cov = np.mean([np.cov(x[y == c], rowvar=False) for c in range(3)], axis=0)  # PLP's MahaDist estimate
    np.testing.assert_allclose(fit.whiten @ fit.whiten.T, np.linalg.inv(cov), rtol=1e-7)


def test_mahalanobis_hand_worked():
    # two classes on a line with identity within-class covariance (after pooling): d_c = squared distance
    x = np.array([[-1.0, -1.0], [1.0, 1.0], [9.0, 9.0], [11.0, 11.0], [-1.0, 1.0], [1.0, -1.0], [9.0, 11.0],
                  [11.0, 9.0]])
    y = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    # means (0,0), (10,10); pooled covariance = identity
    np.testing.assert_allclose(class_distances(np.array([[0.0, 0.0], [10.0, 12.0]]), x, y), [[0, 200], [244, 4]],
                               atol=1e-9)
    np.testing.assert_allclose(maha(np.array([[10.0, 12.0]]), x, y), [-4.0])


def test_mahalanobis_is_invariant_to_standardisation():
    """Why notebook 03 fits it on raw pre-projection features: a per-dimension affine map changes nothing."""
    x, y = _blobs(seed=5)
    scale, shift = np.linspace(0.1, 10, x.shape[1]), np.arange(x.shape[1])
    test = np.random.default_rng(6).normal(size=(15, x.shape[1]))
    a = maha(test, x, y, relative=True)
    b = maha(test * scale + shift, x * scale + shift, y, relative=True)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


def test_mahalanobis_rank_deficient_is_finite():
    x, y = _blobs(n=5, d=12, c=2, seed=7)  # fewer images than dimensions
    y[:2] = [0, 1]
    s = maha(np.random.default_rng(8).normal(size=(4, 12)), x, y)
    assert np.isfinite(s).all()


def test_mahalanobis_bad_input():
    x, y = _blobs()
    with pytest.raises(ValueError, match="no training features"):
        fit_mahalanobis(x, y, num_classes=5)
    with pytest.raises(ValueError, match="cannot score"):
        maha(np.ones((2, 3)), x, y)
    with pytest.raises(ValueError, match="covariance"):
        fit_mahalanobis(x, y, covariance="diagonal")


# ------------------------------------------------------------------------------------------ logits
def test_logit_scores_published_formulas():
    z = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    s = logit_scores(z)
    e = np.exp(z)
    np.testing.assert_allclose(s["MSP"], e.max(1) / e.sum(1))
    np.testing.assert_allclose(s["energy"], np.log(e.sum(1)))
    np.testing.assert_allclose(s["L1"], [3.0 + 1.0 + 0.0, 0.0])  # |2-(-1)| + |0-(-1)| + 0; constant row -> 0
    np.testing.assert_allclose(logit_scores(z, T=2.0)["energy"], 2 * np.log(np.exp(z / 2).sum(1)))


def test_l1_norm_is_shift_invariant_only_when_shifted():
    z = np.random.default_rng(0).normal(size=(10, 4))
    t = torch.as_tensor(z)
    np.testing.assert_allclose(l1_score(t + 5.0).numpy(), l1_score(t).numpy())
    assert not np.allclose((t + 5.0).abs().sum(1).numpy(), t.abs().sum(1).numpy())  # unshifted L1 moves
