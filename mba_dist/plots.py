"""Pictures of a finished run (`mba-dist plot`), as PNG bytes (the run directory writes them).

    training_png    loss and validation Recall@20 of every stage against its epoch (log.jsonl)
    baselines_png   the baseline table as bars: test Recall@20 and NDCG@20 of every model
    behaviors_png   the paper's Fig. 2 (RQ3): for two users, the items they clicked (or the
                    auxiliary behavior) and bought, as 2-D PCA projections of the item factors of
                    MF on the target behavior (pre_f) and of MBA's target model (t)
    search_png      `mba-dist search`: each trial's best validation Recall@20 in trial order,
                    the best so far, and how each trial ended

matplotlib draws them off-screen (Agg).
"""
from __future__ import annotations

import io

import numpy as np

from mba_dist.data.pairs import Pairs


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _plt().close(fig)
    return buf.getvalue()


def training_png(records: list[dict], title: str) -> bytes:
    """Two panels, one line per stage: training loss, and validation Recall@20 (the epochs that
    validated), against the stage's epoch."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    stages = list(dict.fromkeys(r["stage"] for r in records))
    for st in stages:
        rs = [r for r in records if r["stage"] == st]
        a.plot([r["epoch"] for r in rs], [r["loss"] for r in rs], label=st)
        sel = [(r["epoch"], (r.get("valid") or r.get("test"))["recall@20"]) for r in rs
               if (r.get("valid") or r.get("test"))]
        if sel:
            b.plot(*zip(*sel), marker=".", label=st)
    a.set(xlabel="epoch", ylabel="training loss", title="loss")
    a.set_yscale("symlog", linthresh=1.0)  # BPR losses sit near 0.69, MBA's far above
    b.set(xlabel="epoch", ylabel="Recall@20", title="model-selection Recall@20")
    for ax in (a, b):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return _png(fig)


def baselines_png(metrics: dict, title: str) -> bytes:
    """Horizontal bars of test Recall@20 and NDCG@20 per model; the run's model is marked."""
    plt = _plt()
    table = metrics["baselines"]
    models = sorted(table, key=lambda m: table[m]["test"]["recall@20"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.45 * len(models) + 1.6), sharey=True)
    for ax, metric in zip(axes, ("recall@20", "ndcg@20")):
        vals = [table[m]["test"][metric] for m in models]
        colors = ["tab:red" if m == metrics["model"] else "tab:blue" for m in models]
        ax.barh(models, vals, color=colors)
        for y, v in enumerate(vals):
            ax.text(v, y, f" {v:.4f}", va="center", fontsize=8)
        ax.set(xlabel=f"test {metric}", xlim=(0, max(vals) * 1.2 or 1))
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{title} (red: this run's model, selected on {metrics['selected_on']})")
    fig.tight_layout()
    return _png(fig)


def _pca2(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean and the two leading principal axes of the rows of `x`."""
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:2]


def pick_users(aux_only: Pairs, bought: Pairs, num_users: int, n: int = 2) -> list[int]:
    """`n` users with the most of both behaviors (the smaller count of their auxiliary-only
    items and their bought items, highest first; ties to the lower id)."""
    both = np.minimum(np.bincount(aux_only.users, minlength=num_users),
                      np.bincount(bought.users, minlength=num_users))
    order = np.argsort(-both, kind="stable")
    return [int(u) for u in order[:n] if both[u] > 0]


def centroid_gap(items: np.ndarray, clicked: np.ndarray, bought: np.ndarray) -> float:
    """Distance between the mean factor of a user's clicked items and of their bought items,
    in units of the catalog's RMS distance to its mean (so models of different scale compare)."""
    spread = np.sqrt(((items - items.mean(0)) ** 2).sum(1).mean())
    return float(np.linalg.norm(items[clicked].mean(0) - items[bought].mean(0)) / spread)


def behaviors_png(models: dict[str, np.ndarray], users: list[int],
                  clicked: dict[int, np.ndarray], bought: dict[int, np.ndarray],
                  aux_name: str, title: str) -> bytes:
    """One panel per model ({label: item factors [I, d]}): the items each user clicked (dots)
    and bought (stars), projected on the model's two leading principal axes (fit on the whole
    catalog); each panel's title gives the mean click-purchase centroid gap (`centroid_gap`)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.6))
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:purple"]
    for ax, (label, items) in zip(np.atleast_1d(axes), models.items()):
        mean, axes2 = _pca2(items)
        gaps = []
        for u, color in zip(users, colors):
            c = (items[clicked[u]] - mean) @ axes2.T
            b = (items[bought[u]] - mean) @ axes2.T
            ax.scatter(c[:, 0], c[:, 1], s=14, alpha=0.55, color=color,
                       label=f"user {u}: {aux_name} ({len(c)})")
            ax.scatter(b[:, 0], b[:, 1], s=90, marker="*", edgecolor="black", linewidth=0.5,
                       color=color, label=f"user {u}: bought ({len(b)})")
            gaps.append(centroid_gap(items, clicked[u], bought[u]))
        ax.set(title=f"{label}\nclick-purchase centroid gap {np.mean(gaps):.2f} "
                     "(catalog RMS units)", xlabel="PC 1", ylabel="PC 2")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return _png(fig)


def search_png(rows: list[dict], title: str) -> bytes:
    """Validation Recall@20 of every trial (`search.trial_rows`) against its number, one
    marker per way a trial ended, and the best so far as a step line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for how, marker in (("finished", "o"), ("stopped by ASHA", "x"), ("diverged", "v"),
                        ("failed", "s")):
        rs = [r for r in rows if r["ended"] == how]
        if rs:
            ax.scatter([r["trial"] for r in rs], [r["valid_recall@20"] for r in rs],
                       marker=marker, label=how)
    best, run = [], -1.0
    for r in rows:
        run = max(run, r["valid_recall@20"]) if np.isfinite(r["valid_recall@20"]) else run
        best.append(run)
    ax.step([r["trial"] for r in rows], best, where="post", color="k", lw=1, label="best so far")
    ax.set(xlabel="trial", ylabel="best validation Recall@20", title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)
