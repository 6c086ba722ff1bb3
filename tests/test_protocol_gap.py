"""The protocol-sensitivity grid and the modality-gap measures, against hand computations."""

import numpy as np
import pandas as pd
import pytest

from helpers import gap, protocol


def test_variants_change_one_thing_at_a_time():
    grid = protocol.variants(("single", "plp5"))
    base = grid[0]
    assert base["baseline"] and base["detector"] == {"name": "mcm", "T": 1.0, "prompts": "single"}
    assert (base["interpolation"], base["fpr_positive"], base["fpr_method"]) == ("bilinear", "id", "nearest")
    for v in grid[1:]:
        if v["factor"].startswith(("all", "energy", "entropy")):
            continue
        changed = [k for k in ("interpolation", "fpr_positive", "fpr_method") if v[k] != base[k]]
        changed += [k for k in ("T", "prompts") if v["detector"].get(k) != base["detector"][k]]
        assert len(changed) == 1, v
    assert len({v["factor"] for v in grid}) == len(grid)  # the variant names key the rows
    energy = [v for v in grid if v["detector"]["name"] == "energy"]
    assert [v["detector"]["T"] for v in energy] == [1.0, 0.01] and energy[0]["baseline"]


def test_sensitivity_table_measures_each_detector_against_its_own_baseline():
    rows = []
    for step, factor, det, base, aurocs in [("s0", "baseline", "mcm", True, (70, 80)), ("s1", "temperature", "mcm",
                                            False, (60, 70)), ("s2", "energy base", "energy", True, (50, 52)),
                                           ("s3", "energy T", "energy", False, (58, 62))]:
        for o, a in zip(("x", "y"), aurocs):
            rows.append({"notebook": "", "step": step, "model": "m", "model_id": "m", "method": "zero-shot",
                         "shots": "0", "seed": 0, "detector": det, "detector_label": f"{det} {step}", "params": "{}",
                         "id_set": "id", "ood_set": o, "n_id": 1, "n_ood": 1, "auroc": a, "fpr95": 100 - a,
                         "aupr_in": 0, "aupr_out": 0, "id_acc": 50, "fpr_positive": "id", "fpr_method": "nearest",
                         "variant": factor, "factor": factor, "interpolation": "bilinear", "baseline": base})
    t = protocol.sensitivity_table(pd.DataFrame(rows)).set_index("factor")
    assert t.loc["temperature", "avg AUROC"] == 65 and t.loc["temperature", "Δ avg AUROC"] == -10
    assert t.loc["energy T", "Δ avg AUROC"] == 9 and t.loc["energy T", "Δ avg FPR95"] == -9  # vs energy's base
    assert t.loc["baseline", "Δ avg AUROC"] == 0 and t.loc["energy base", "Δ avg AUROC"] == 0


def test_gap_measures_hand_worked():
    # two classes; images at angle ±a around their prompt in a plane orthogonal to the prompts' offset
    text = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    image = np.array([[0.6, 0.0, 0.8], [0.0, 0.6, 0.8], [0.6, 0.0, 0.8], [0.0, 0.6, 0.8]])
    labels = np.array([0, 1, 0, 1])
    m = gap.gap_measures(image, labels, text)
    # centroids (0.3, 0.3, 0.8) and (0.5, 0.5, 0): distance sqrt(0.04 + 0.04 + 0.64)
    assert m["centroid gap"] == pytest.approx(np.sqrt(0.72))
    assert m["image·own prompt"] == pytest.approx(0.6) and m["image·other prompts"] == pytest.approx(0.0)
    assert m["prompt·prompt"] == pytest.approx(0.0)
    # image·image over distinct pairs: same class 1.0 (2 pairs x2), other class 0.64 (4 pairs x2) -> (4 + 5.12) / 12
    assert m["image·image"] == pytest.approx((4 * 1.0 + 8 * 0.64) / 12)
    assert m["alignment"] == pytest.approx(0.16 + 0.64)  # ||(0.6,0,0.8) - (1,0,0)||^2
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    sq = [np.sum((image[i] - image[j]) ** 2) for i, j in pairs]
    assert m["uniformity (images)"] == pytest.approx(np.log(np.mean(np.exp(-2 * np.array(sq)))))
