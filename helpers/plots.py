"""Figures the notebooks share, in the series' style (:func:`helpers.report.set_style`). Each function returns
the matplotlib figure; the notebook saves it with :func:`helpers.report.save_figure`.

Colours: ID is always ``C0`` (blue) and OOD ``C1`` (orange).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.metrics import roc_curve

ID_COLOR, OOD_COLOR = "C0", "C1"


def sample_grid(datasets: Mapping, per_row: int = 8, title: str = "", max_per_row: int = 16):
    """``per_row`` images (evenly spaced) of each dataset (:class:`ImageFolderDataset`), one row per dataset.
    At most ``max_per_row`` columns: one image per class of ImageNet's 1,000 would be an unreadable figure (and
    took two minutes to draw)."""
    per_row = max(1, min(per_row, max_per_row))
    fig, axes = plt.subplots(len(datasets), per_row, figsize=(1.25 * per_row, 1.4 * len(datasets)), squeeze=False)
    for r, (name, ds) in enumerate(datasets.items()):
        for c, i in enumerate(np.linspace(0, len(ds) - 1, per_row).astype(int)):
            ax = axes[r, c]
            ax.imshow(ds.load_rgb(int(i)))
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title)
    return fig


def pca_scatter(groups: Mapping[str, np.ndarray], title: str, max_points: int = 2000, seed: int = 0):
    """2-D PCA (fitted on all groups together) of embeddings, one colour per group (name -> (N, D))."""
    rng = np.random.default_rng(seed)
    picked = {n: x[rng.choice(len(x), min(max_points, len(x)), replace=False)] for n, x in groups.items()}
    pca = PCA(n_components=2, random_state=0).fit(np.concatenate(list(picked.values())))
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    for n, x in picked.items():
        z = pca.transform(x)
        ax.scatter(z[:, 0], z[:, 1], s=4, alpha=0.5, label=n)
    ax.set_xlabel("PC 1"), ax.set_ylabel("PC 2")
    ax.legend(markerscale=4, fontsize=8)
    ax.set_title(title)
    return fig


def gap_figure(image: np.ndarray, labels: np.ndarray, prompts: np.ndarray, class_text: np.ndarray,
               class_names: Sequence[str], max_points: int = 2000, seed: int = 0):
    """Left: a PCA of ID image embeddings (dots) and every prompt's embedding (stars; ``prompts`` (C, T, D)),
    coloured by class, with the two centroids; right: the cosines of an image with its own class prompt
    (``class_text`` (C, D), ensembled), of two images and of two classes' prompts."""
    prompt_labels = np.repeat(np.arange(prompts.shape[0]), prompts.shape[1])
    prompts = prompts.reshape(-1, prompts.shape[-1])
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(image), min(max_points, len(image)), replace=False)
    img, lab = image[pick], labels[pick]
    pca = PCA(n_components=2, random_state=0).fit(np.concatenate([img, prompts]))
    zi, zt = pca.transform(img), pca.transform(prompts)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for c, name in enumerate(class_names[:20]):
        color = cmap(c % cmap.N)
        axes[0].scatter(*zi[lab == c].T, s=4, alpha=0.35, color=color)
        axes[0].scatter(*zt[prompt_labels == c].T, s=40, marker="*", color=color, edgecolor="k", linewidth=0.3,
                        label=name)
    for z, name, m in ((zi, "image centroid", "X"), (zt, "prompt centroid", "P")):
        axes[0].scatter(*z.mean(0), s=160, marker=m, color="k", label=name)
    axes[0].set_xlabel("PC 1"), axes[0].set_ylabel("PC 2")
    axes[0].legend(fontsize=7, ncol=6, loc="upper left", bbox_to_anchor=(0, -0.12))
    axes[0].set_title("ID images (dots) and class prompts (stars), PCA")
    own = (image * class_text[labels]).sum(1)
    sub = img[:500]
    img_img = (sub @ sub.T)[np.triu_indices(len(sub), 1)]
    txt_txt = (class_text @ class_text.T)[np.triu_indices(len(class_text), 1)]
    bins = np.linspace(min(own.min(), img_img.min(), txt_txt.min()), 1, 60)
    axes[1].hist(own, bins=bins, alpha=0.6, density=True, label="image · its class prompt")
    axes[1].hist(img_img, bins=bins, alpha=0.5, density=True, label="image · another image")
    axes[1].hist(txt_txt, bins=bins, alpha=0.5, density=True, label="prompt · another class's prompt")
    axes[1].set_xlabel("cosine similarity"), axes[1].set_ylabel("density"), axes[1].legend(fontsize=8)
    axes[1].set_title("Cosines within and across the modalities")
    return fig


def pick(wanted: Sequence[str], available: Iterable[str], what: str, limit: int = 5) -> list[str]:
    """The detector labels of ``wanted`` that this run has (``available``: e.g. ``Evaluation.detectors``), in
    ``wanted``'s order, without repeats. When it has none of them (a run of custom detectors only), the first
    ``limit`` labels it has, with a printed note, so that figures and tables show what exists."""
    have = list(available)
    chosen = [w for w in dict.fromkeys(wanted) if w in have]
    if chosen or not have:
        return chosen
    print(f"{what}: none of {list(dict.fromkeys(wanted))} is among this run's detectors; showing "
          f"{have[:limit]} instead")
    return have[:limit]


def _nothing_to_show(what: str):
    """A small figure that says why it is empty (no detector label to plot), instead of an error."""
    print(f"{what}: no detector to show")
    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, f"{what}: no detector to show", ha="center", va="center")
    return fig


def score_histograms(scores: Mapping[str, Mapping[str, np.ndarray]], labels: Sequence[str], id_set: str,
                     ood_sets: Sequence[str], table: pd.DataFrame | None = None):
    """Histograms of ID (blue) vs each OOD set (orange), one row per detector label; ``scores`` as in
    :attr:`helpers.evaluation.Evaluation.scores`; titles show the AUROC from ``table`` when given."""
    if not labels or not ood_sets:
        return _nothing_to_show("score histograms")
    fig, axes = plt.subplots(len(labels), len(ood_sets), figsize=(3.2 * len(ood_sets), 2.0 * len(labels)),
                             squeeze=False)
    for r, lab in enumerate(labels):
        for c, o in enumerate(ood_sets):
            a, b = scores[lab][id_set], scores[lab][o]
            lo, hi = np.percentile(np.r_[a, b], [0.5, 99.5])
            bins = np.linspace(lo, hi, 40) if hi > lo else 10
            ax = axes[r, c]
            ax.hist(a, bins=bins, density=True, alpha=0.55, color=ID_COLOR, label=f"ID ({id_set})")
            ax.hist(b, bins=bins, density=True, alpha=0.55, color=OOD_COLOR, label="OOD")
            title = o
            if table is not None:
                row = table[(table.detector_label == lab) & (table.ood_set == o)]
                title += f" · AUROC {row.auroc.iloc[0]:.1f}" if len(row) else ""
            ax.set_title(title, fontsize=9)
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(lab, fontsize=8)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Score histograms: ID (blue) vs each OOD set (orange); higher = more ID")
    fig.tight_layout()
    return fig


def roc_curves(scores: Mapping[str, Mapping[str, np.ndarray]], labels: Sequence[str], id_set: str,
               ood_sets: Sequence[str]):
    """ROC curves (ID positive) per OOD set, one line per detector label; FPR95 is where a curve crosses 0.95."""
    if not labels or not ood_sets:
        return _nothing_to_show("ROC curves")
    fig, axes = plt.subplots(1, len(ood_sets), figsize=(3.4 * len(ood_sets), 3.4), sharey=True, squeeze=False)
    for c, o in enumerate(ood_sets):
        ax = axes[0, c]
        for lab in labels:
            a, b = scores[lab][id_set], scores[lab][o]
            fpr, tpr, _ = roc_curve(np.r_[np.ones(len(a)), np.zeros(len(b))], np.r_[a, b])
            ax.plot(fpr, tpr, label=lab, lw=1.3)
        ax.axhline(0.95, ls=":", color="gray")
        ax.plot([0, 1], [0, 1], ls="--", color="lightgray")
        ax.set_title(o, fontsize=10), ax.set_xlabel("OOD accepted (FPR)")
    axes[0, 0].set_ylabel("ID accepted (TPR)")
    axes[0, -1].legend(fontsize=7, loc="lower right")
    fig.suptitle("ROC curves, ID = positive; FPR95 is where a curve crosses the dotted line")
    fig.tight_layout()
    return fig


def metric_lines(df: pd.DataFrame, x: str, hue: str, metrics=("auroc", "fpr95"), logx: bool = False,
                 marks: Mapping[str, float] | None = None, title: str = ""):
    """AUROC and FPR95 against ``x``, one line per ``hue`` value; ``marks``: labelled vertical lines."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for h, d in df.groupby(hue, sort=False):
            ax.plot(d[x], d[m], marker="o", label=h)
        ax.set_xscale("log" if logx else "linear")
        ax.set_xlabel(x), ax.set_ylabel({"auroc": "AUROC (%) ↑", "fpr95": "FPR95 (%) ↓"}.get(m, m))
        for name, v in (marks or {}).items():
            ax.axvline(v, ls=":", color="gray")
            ax.annotate(name, (v, ax.get_ylim()[1]), fontsize=8, ha="center", va="bottom")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def delta_bars(table: pd.DataFrame, label_cols: Sequence[str], delta_cols=("Δ avg AUROC", "Δ avg FPR95"), title=""):
    """Horizontal bars of the ``delta_cols`` of each row, labelled by ``label_cols`` joined."""
    labels = [" · ".join(str(r[c]) for c in label_cols) for _, r in table.iterrows()]
    fig, axes = plt.subplots(1, len(delta_cols), figsize=(13, 0.45 * len(table) + 1.5), sharey=True)
    for ax, col in zip(np.atleast_1d(axes), delta_cols):
        ax.barh(labels, table[col], color="C0")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(f"{col} (points)", fontsize=10)
    np.atleast_1d(axes)[0].invert_yaxis()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def confidence_examples(examples: Mapping[str, np.ndarray], temperatures: Sequence[float], top: int = 10):
    """The ``top`` largest softmax probabilities of one image per set (title -> its cosines to the K class
    prompts (K,)), one row per temperature; ID in blue, OOD in orange."""
    fig, axes = plt.subplots(len(temperatures), len(examples), figsize=(2.6 * len(examples), 2.4 * len(temperatures)),
                             sharey="row", squeeze=False)
    for c, (title, cos) in enumerate(examples.items()):
        for r, T in enumerate(temperatures):
            z = np.asarray(cos, np.float64) / T
            p = np.sort(np.exp(z - z.max()) / np.exp(z - z.max()).sum())[::-1][:top]
            axes[r, c].bar(range(len(p)), p, color=ID_COLOR if c == 0 else OOD_COLOR)
            axes[r, c].set_title(f"{title}\nMCM={p[0]:.3f}" if r == 0 else f"MCM={p[0]:.4f}", fontsize=9)
            axes[r, c].set_xticks([])
            if c == 0:
                axes[r, 0].set_ylabel(f"softmax, T={T:g}")
    fig.suptitle(f"Top-{top} class probabilities (sorted) of one image per set", y=1.02)
    return fig


def neglabel_mining(negatives):
    """Histogram of every candidate's 0.95-quantile cosine to the ID labels (nouns, adjectives), the cut-off of
    the kept negatives (dashed) and the mean cosine between two ID labels (black)."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, (pos, q) in enumerate(negatives.candidate_quantiles.items()):
        kept = negatives.quantiles[negatives.is_adjective == (pos == "adj")]
        if len(q):
            ax.hist(q, bins=60, alpha=0.6, color=f"C{i}", label=f"{pos} candidates ({len(q)})")
        if len(kept):
            ax.axvline(kept.max(), ls="--", color=f"C{i}")
    ids = negatives.id_embeddings @ negatives.id_embeddings.T
    ax.axvline(ids[~np.eye(len(ids), dtype=bool)].mean(), color="k", label="mean cosine between two ID labels")
    ax.set_xlabel("0.95-quantile of a candidate's cosines to the ID labels"), ax.set_ylabel("candidates")
    ax.set_title("NegLabel mining: keep the 15% left of the dashed lines")
    ax.legend(fontsize=8)
    return fig


def confusion(true: np.ndarray, pred: np.ndarray, class_names: Sequence[str], xlabel: str, title: str):
    """Row-normalised confusion matrix (% of each true class) as a heatmap; class names shown up to 20 classes."""
    import seaborn as sns
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(true, pred, labels=range(len(class_names)), normalize="true")
    names = list(class_names) if len(cm) <= 20 else False
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    sns.heatmap(100 * cm, annot=len(cm) <= 20, fmt=".0f", cmap="Blues", cbar_kws={"label": "% of the true class"},
                xticklabels=names, yticklabels=names, ax=ax)
    ax.set_xlabel(xlabel), ax.set_ylabel("true label"), ax.set_title(title)
    return fig


def auroc_bars(table: pd.DataFrame, title: str = "AUROC per detector and OOD set"):
    """Bars of AUROC per detector label (x) and OOD set (hue) from long-table rows, chance level dotted."""
    import seaborn as sns

    t = table[table["ood_set"] != "average"]
    fig, ax = plt.subplots(figsize=(max(8, 0.7 * t["detector_label"].nunique()), 4))
    sns.barplot(data=t, x="detector_label", y="auroc", hue="ood_set", ax=ax)
    ax.axhline(50, color="k", lw=0.8, ls=":")
    ax.set_ylim(max(0, t["auroc"].min() - 10), 100)
    ax.set_xlabel(""), ax.set_ylabel("AUROC (%)")
    ax.tick_params(axis="x", rotation=40)
    for lab in ax.get_xticklabels():
        lab.set_ha("right")
    ax.set_title(title)
    return fig


def familiar_bars(table: pd.DataFrame, labels: Sequence[str]):
    """Familiar-OOD experiment: per experiment (rows) and model (control / familiar, columns) the AUROC of the
    ``labels`` detectors on the seen and the unseen classes, with bootstrap intervals."""
    steps = list(dict.fromkeys(table["step"]))
    x = np.arange(len(labels))
    fig, axes = plt.subplots(len(steps), 2, figsize=(12, 3.8 * len(steps)), sharey=True, squeeze=False)
    for r, step in enumerate(steps):
        for c, method in enumerate(["control", "familiar"]):
            ax = axes[r, c]
            d = table[(table.step == step) & (table.method == method)]
            for j, part in enumerate(["seen", "unseen"]):
                e = d[d.variant == part].set_index("detector_label").loc[list(labels)]
                ax.bar(x + (j - 0.5) * 0.38, e.auroc, 0.38, label=f"{part} classes",
                       yerr=[e.auroc - e.auroc_lo, e.auroc_hi - e.auroc], capsize=2)
            ax.axhline(50, color="k", lw=0.8, ls=":")
            ax.set_xticks(x, list(labels) if r == len(steps) - 1 else [], rotation=35, ha="right")
            ax.set_title(f"{step}: {method} ({d.id_acc.dropna().iloc[0]:.0f}% zero-shot)", fontsize=10)
        axes[r, 0].set_ylabel("AUROC (%) vs ID test")
    axes[0, 1].legend(fontsize=8)
    fig.suptitle("Familiar OOD: OOD classes seen in pretraining vs unseen (95% bootstrap intervals)")
    fig.tight_layout()
    return fig


def family_scatter(summary: pd.DataFrame, fits: pd.DataFrame, pairings: Mapping[str, tuple[str, str]], title: str):
    """ID accuracy (x) vs mean AUROC (y) of every family member, one panel per pairing, with the fitted line."""
    fig, axes = plt.subplots(1, len(pairings), figsize=(5 * len(pairings), 4.2), squeeze=False)
    for ax, (p, (x, y)) in zip(axes[0], pairings.items()):
        f = fits.set_index("pairing").loc[p]
        ax.scatter(summary[x], summary[y], s=40, zorder=3)
        for _, r in summary.iterrows():
            name = r["model"] if len(r["model"]) <= 28 else "…" + r["model"][-27:]
            ax.annotate(name, (r[x], r[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        xs = np.linspace(summary[x].min(), summary[x].max(), 50)
        ax.plot(xs, f.slope * xs + f.intercept, "k--", lw=1)
        ax.set_xlabel(x.replace("acc: ", "ID accuracy (%): ")), ax.set_ylabel(y.replace("AUROC: ", "mean AUROC (%): "))
        ax.set_title(f"{p}: $R^2$ = {f.r2:.2f} (n = {int(f.n)})", fontsize=10)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def what_moves(trainable: pd.DataFrame, drift: pd.DataFrame):
    """Left: trainable numbers per adaptation method (log scale); right: fine-tuning's relative weight change per
    image-tower block and shots setting."""
    import seaborn as sns

    drift = drift.assign(group=drift["group"].str.replace("transformer.resblocks.", "block "))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [1, 2]})
    sns.barplot(data=trainable, x="method", y="trainable", ax=axes[0], color="C0")
    axes[0].set_yscale("log"), axes[0].set_ylabel("trainable numbers"), axes[0].set_xlabel("")
    plt.setp(axes[0].get_xticklabels(), rotation=20, ha="right")
    sns.barplot(data=drift, x="group", y="relative change", hue="shots", ax=axes[1])
    plt.setp(axes[1].get_xticklabels(), rotation=40, ha="right")
    axes[1].set_xlabel("image-tower part"), axes[1].set_title("fine-tuning: relative weight change")
    fig.suptitle("Which weights move")
    return fig


def accuracy_vs_auroc(summary: pd.DataFrame):
    """Mean ID accuracy vs mean AUROC (± one std over seeds) per method and detector (one colour) and shots
    setting (one marker), from :func:`helpers.tables.seed_summary` rows of the OOD average."""
    d = summary.assign(curve=summary["method"] + " · " + summary["detector_label"])
    markers = {"0": "*", "1": "o", "16": "s", "full": "D"}
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    for i, (curve, g) in enumerate(d.groupby("curve", sort=False)):
        ax.errorbar(g.id_acc_mean, g.auroc_mean, xerr=g.id_acc_std, yerr=g.auroc_std, fmt="none", ecolor=f"C{i}",
                    alpha=0.5)
        for j, (_, r) in enumerate(g.iterrows()):
            ax.scatter(r.id_acc_mean, r.auroc_mean, color=f"C{i}", marker=markers.get(r.shots, "o"),
                       s=220 if r.shots == "0" else 70, edgecolor="k", linewidth=0.5, label=curve if j == 0 else None)
        ax.plot(g.id_acc_mean, g.auroc_mean, color=f"C{i}", alpha=0.4)
    names = {"0": "no training images", "1": "1 per class", "16": "16 per class", "full": "all training images"}
    for k, mk in markers.items():
        ax.scatter([], [], marker=mk, color="gray", label=names[k])
    ax.set_xlabel("ID accuracy (%)"), ax.set_ylabel("AUROC (%), average over OOD sets")
    ax.legend(fontsize=7, loc="best")
    ax.set_title("ID accuracy vs OOD detection, per method and number of shots")
    return fig


def auroc_per_set(long: pd.DataFrame, curves: Sequence[tuple[str, str]], shots: Sequence[str]):
    """AUROC per OOD set (panels) against the shots setting for each (method, detector label) curve (mean ± std
    over seeds); the dashed line is the first curve's zero-shot value."""
    import seaborn as sns

    keep = pd.DataFrame(list(curves), columns=["method", "detector_label"])
    d = long.merge(keep)
    d = d[d.ood_set != "average"].assign(curve=lambda x: x.method + " · " + x.detector_label)
    grid = sns.catplot(data=d[d.shots != "0"], x="shots", y="auroc", hue="curve", col="ood_set", kind="point",
                       errorbar="sd", dodge=0.3, height=3.2, aspect=0.9, order=list(shots))
    zero = d[d.shots == "0"].set_index("ood_set")["auroc"]
    for ax, name in zip(grid.axes.flat, dict.fromkeys(d.ood_set)):
        if name in zero:
            ax.axhline(float(np.atleast_1d(zero[name])[0]), color="k", ls="--", lw=1)
    grid.set_titles("{col_name}"), grid.set_axis_labels("shots per class", "AUROC (%)")
    grid.figure.suptitle("AUROC per OOD set (dashed: zero-shot)", y=1.03)
    return grid.figure


def ratio_heatmap(table: pd.DataFrame):
    """SeTAR's selected ratios: one row per search (e.g. split seed), one column per (tower, block)."""
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(max(6, 0.55 * table.shape[1]), 0.6 * len(table) + 1.6))
    sns.heatmap(table.to_numpy(float), annot=True, fmt=".2f", cmap="Blues", vmin=0, vmax=0.4, cbar_kws={"label": "ratio"},
                xticklabels=list(table.columns), yticklabels=[f"split seed {i}" for i in table.index], ax=ax)
    ax.set_xlabel("tower and block (search order: left to right)")
    ax.set_title("Selected ratio of the smallest singular components removed, per block")
    return fig


def search_steps(log: pd.DataFrame):
    """SeTAR's search: every candidate's objective (dots, per ratio) and the running best (line), per step."""
    fig, ax = plt.subplots(figsize=(9, 3.8))
    steps = log.groupby("step", sort=True)
    x = log["step"] + (log["ratio"] - log["ratio"].mean()) * 0.8
    sc = ax.scatter(x, log["loss"], c=log["ratio"], cmap="viridis", s=18)
    ax.plot(list(steps.groups), np.minimum.accumulate(steps["loss"].min().to_numpy()), "k-", lw=1.2,
            label="running best")
    names = steps.first()
    ax.set_xticks(list(steps.groups), [f"{t}\n{b}" for t, b in zip(names["tower"], names["block"])], fontsize=8)
    ax.set_xlabel("search step (tower, block)"), ax.set_ylabel("objective (lower is better)")
    fig.colorbar(sc, ax=ax, label="ratio")
    ax.legend(fontsize=8)
    ax.set_title("SeTAR's greedy search: each candidate's objective")
    return fig


def search_time(timing: pd.DataFrame):
    """Seconds per search (``timing``: search, seconds, candidates), the speed-up over the first row written on
    each other bar."""
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.7 * len(timing)))
    ax.barh(timing["search"], timing["seconds"], color=[f"C{i}" for i in range(len(timing))])
    base = timing["seconds"].iloc[0]
    for i, (sec, n) in enumerate(zip(timing["seconds"], timing["candidates"])):
        note = f"{sec:.1f} s, {n} candidates" + (f" ({sec / base:.1f}x the first)" if i else "")
        ax.text(sec, i, " " + note, va="center", fontsize=8)
    ax.set_xlim(0, timing["seconds"].max() * 1.6)
    ax.invert_yaxis()
    ax.set_xlabel("search time (s)")
    ax.set_title("The same greedy search, two implementations")
    return fig


def spectrum(singular_values: np.ndarray, dropped: int, title: str):
    """Singular values (descending) of a weight matrix, the ``dropped`` smallest marked, with the share of the
    energy (sum of squares) they carry."""
    s = np.asarray(singular_values)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    keep = len(s) - dropped
    ax.plot(np.arange(keep), s[:keep], color="C0", label="kept")
    ax.plot(np.arange(keep, len(s)), s[keep:], color="C3", lw=2.5,
            label=f"removed: {dropped} of {len(s)} ({100 * (s[keep:] ** 2).sum() / (s ** 2).sum():.1f}% of the energy)")
    ax.set_xlabel("component (largest first)"), ax.set_ylabel("singular value"), ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(title)
    return fig


def modality_panels(panels: Mapping[str, tuple], class_names: Sequence[str], max_points: int = 1500, seed: int = 0):
    """One PCA per panel ``{title: (ID image (N, D), ID labels (N,), class prompts (C, D), OOD image (M, D))}``:
    ID images coloured by class, OOD images grey, prompts as stars, the image and prompt centroids as crosses
    joined by a line (the gap, as far as two dimensions show it)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 5), squeeze=False)
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    rng = np.random.default_rng(seed)
    for ax, (title, (image, labels, text, ood)) in zip(axes[0], panels.items()):
        pick = rng.choice(len(image), min(max_points, len(image)), replace=False)
        pick_ood = rng.choice(len(ood), min(max_points, len(ood)), replace=False)
        pca = PCA(n_components=2, random_state=0).fit(np.concatenate([image[pick], text]))
        zi, zo, zt = pca.transform(image[pick]), pca.transform(ood[pick_ood]), pca.transform(text)
        ax.scatter(*zo.T, s=3, alpha=0.25, color="0.6", label="OOD images")
        for c, name in enumerate(class_names[:20]):
            color = cmap(c % cmap.N)
            ax.scatter(*zi[labels[pick] == c].T, s=3, alpha=0.35, color=color)
            ax.scatter(*zt[c], s=90, marker="*", color=color, edgecolor="k", linewidth=0.4, label=name)
        ci, ct = pca.transform(image.mean(0, keepdims=True))[0], pca.transform(text[labels].mean(0, keepdims=True))[0]
        ax.plot(*np.stack([ci, ct]).T, "k--", lw=1)
        ax.scatter(*ci, s=140, marker="X", color="k", label="ID image centroid")
        ax.scatter(*ct, s=140, marker="P", color="k", label="prompt centroid")
        gap = np.linalg.norm(image.mean(0) - text[labels].mean(0))
        ax.set_title(f"{title}\ncentroid gap {gap:.3f}", fontsize=10)
        ax.set_xlabel("PC 1"), ax.set_ylabel("PC 2")
    axes[0][0].legend(fontsize=7, ncol=5, loc="upper left", bbox_to_anchor=(0, -0.12))
    return fig


def gap_vs_lambda(gaps: pd.DataFrame, measures=("centroid gap", "image·own prompt")):
    """``gaps``: rows with model, lam (NaN = zero-shot), role (ID / OOD) and the gap measures (averaged over seeds
    and OOD sets); one panel per measure, one line per model and role over λ on a symmetric-log axis (λ = 0
    included), the zero-shot value as a thin horizontal line of the same colour."""
    fig, axes = plt.subplots(1, len(measures), figsize=(6 * len(measures), 4), squeeze=False)
    tuned = gaps[gaps["lam"].notna()].groupby(["model", "role", "lam"], as_index=False)[list(measures)].mean()
    zero = gaps[gaps["lam"].isna()].groupby(["model", "role"])[list(measures)].mean()
    color = {model: f"C{i}" for i, model in enumerate(dict.fromkeys(gaps["model"]))}
    for ax, m in zip(axes[0], measures):
        for (model, role), g in tuned.groupby(["model", "role"]):
            ls = "-" if role == "ID" else ":"
            ax.plot(g["lam"], g[m], marker="o", ls=ls, color=color[model], label=f"{model}, {role}")
            if (model, role) in zero.index:
                ax.axhline(zero.loc[(model, role), m], color=color[model], ls=ls, lw=0.8, alpha=0.5)
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_xlim(-2e-4, tuned["lam"].max() * 1.5 if len(tuned) else 1)
        ax.set_xlabel("λ (CMA's weight; 0 = plain fine-tuning)"), ax.set_ylabel(m)
        ax.set_title(f"{m} vs λ (thin lines: zero-shot)")
    axes[0][0].legend(fontsize=8)
    return fig


def auroc_vs_gap(points: pd.DataFrame, x: str = "centroid gap", y: str = "auroc", label: str = "run"):
    """One dot per run (``points``: ``label``, model, ``x`` = its ID gap, ``y`` = its mean AUROC), per model."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, (model, g) in enumerate(points.groupby("model")):
        ax.scatter(g[x], g[y], color=f"C{i}", label=model)
        for _, r in g.iterrows():
            ax.annotate(str(r[label]), (r[x], r[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"ID {x} (lower = images closer to their prompts)"), ax.set_ylabel(f"mean {y.upper()} over OOD sets")
    ax.set_title("Does closing the gap help OOD detection?")
    ax.legend(fontsize=8)
    return fig


def attack_grid(rows: Mapping[str, Sequence[np.ndarray]], n: int = 6, magnify: float = 10.0):
    """Image rows ``{title: [images (N, 3, H, W) in [0, 1]]}`` of the first ``n`` pairs; a row whose title
    starts with "δ" is shown as ``0.5 + magnify · δ``."""
    n = min(n, *(len(images) for images in rows.values()))  # fewer pairs than columns: fewer columns
    fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.7 * len(rows)), squeeze=False)
    for r, (title, images) in enumerate(rows.items()):
        for c in range(n):
            img = np.asarray(images[c], np.float32).transpose(1, 2, 0)
            if title.startswith("δ"):
                img = 0.5 + magnify * img
            axes[r][c].imshow(np.clip(img, 0, 1))
            axes[r][c].set_xticks([]), axes[r][c].set_yticks([])
        axes[r][0].set_ylabel(title, fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle(f"Source OOD images, their manipulated versions, the perturbation (×{magnify:g}) and the ID targets")
    return fig


def attack_curves(histories: Mapping[str, pd.DataFrame], aurocs: pd.DataFrame | None = None):
    """Left: mean cosine to the target feature after each step, per attack; right (``aurocs``: attack,
    attack_steps, detector_label, auroc; :func:`helpers.views.attack_progress`): AUROC of each detector against the number of steps."""
    fig, axes = plt.subplots(1, 2 if aurocs is not None else 1, figsize=(12 if aurocs is not None else 6, 4),
                             squeeze=False)
    for name, h in histories.items():
        axes[0][0].plot(h["step"], h["cos to target"], label=name)
    axes[0][0].set_xlabel("step"), axes[0][0].set_ylabel("cos(f(x+δ), f(target))"), axes[0][0].legend(fontsize=8)
    axes[0][0].set_title("The attack pulls the OOD image's feature to its ID target")
    if aurocs is not None:
        for (attack, label), g in aurocs.groupby(["attack", "detector_label"], sort=False):
            axes[0][1].plot(g["attack_steps"], g["auroc"], marker="o", ls="-" if attack == "smooth" else "--",
                            label=f"{label}, {attack}")
        axes[0][1].axhline(50, color="k", lw=0.8, ls=":")
        axes[0][1].set_xlabel("attack steps"), axes[0][1].set_ylabel("AUROC (ID vs manipulated OOD)")
        axes[0][1].legend(fontsize=7), axes[0][1].set_title("Detection gets harder with every step")
    return fig


def auroc_vs_eps(table: pd.DataFrame):
    """AUROC (``table``: ``ε (/255)``, detector_label, auroc; :func:`helpers.views.attack_eps`) against the L∞
    bound of the perturbation."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, g in table.groupby("detector_label", sort=False):
        ax.plot(g["ε (/255)"], g["auroc"], marker="o", label=label)
    ax.axhline(50, color="k", lw=0.8, ls=":")
    ax.set_xlabel("ε (L∞ bound, in 1/255 steps)"), ax.set_ylabel("AUROC (ID vs manipulated OOD)")
    ax.set_title("A bounded attack (extension)"), ax.legend(fontsize=8)
    return fig


def comparison_heatmap(summary: pd.DataFrame, metrics=(("auroc", "AUROC ↑", "viridis"), ("fpr95", "FPR95 ↓", "viridis_r"))):
    """Notebook 08's main figure: one row per notebook · method · detector (``summary`` from
    :func:`helpers.summary.main_comparison`), one column per OOD set and the average, one panel per metric."""
    import seaborn as sns

    from .summary import by_row

    grids = {metric: by_row(summary, metric) for metric, _, _ in metrics}
    n_rows = len(grids[metrics[0][0]])
    fig, axes = plt.subplots(1, len(metrics), figsize=(7 * len(metrics), 0.24 * n_rows + 1.8), sharey=True,
                             squeeze=False)
    for ax, (metric, title, cmap) in zip(axes[0], metrics):
        grid = grids[metric]
        sns.heatmap(grid, annot=True, fmt=".1f", cmap=cmap, annot_kws={"fontsize": 6.5}, ax=ax,
                    cbar_kws={"label": f"{title} (%)", "shrink": 0.5})
        ax.set_title(title), ax.set_xlabel("OOD set"), ax.set_ylabel("")
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle("Every detector and adaptation method of the series (mean over seeds)")
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    return fig
