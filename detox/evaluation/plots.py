"""Every figure the project draws, from plain data, saved atomically (PNG).

curves.png (training), toxicity_hist.png (evaluation) and pareto.png (sweep summary).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from detox.core.atomic import atomic_path


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (no display on clusters)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str, dpi: int = 110) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    pyplot().close(fig)
    return path


def plot_curves(rows: list[dict], path: str) -> str:
    """Reward (mean ± std, and each component's own score when there are several), KL
    (per-sequence k1 sum) and KL coefficient by step, and the validation toxicity when `val/...`
    rows exist. `rows`: metrics.jsonl rows."""
    plt = pyplot()
    steps = np.array([r["step"] for r in rows])

    def series(key):
        return np.array([r.get(key, np.nan) for r in rows], dtype=float)

    val_keys = sorted({k for r in rows for k in r if k.startswith("val/") and k.endswith("/toxicity_mean")})
    fig, axes = plt.subplots(1, 3 + bool(val_keys), figsize=(13 + 4.3 * bool(val_keys), 3.6))
    mean, std = series("env/reward_mean"), series("env/reward_std")
    axes[0].plot(steps, mean, color="tab:green", label="reward")
    axes[0].fill_between(steps, mean - std, mean + std, color="tab:green", alpha=0.2)
    components = sorted({k for r in rows for k in r if k.startswith("env/reward/") and k.endswith("_mean")})
    if len(components) > 1:  # each component's own score (before its weight) beside the reward
        others = ["tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan"]
        for key, color in zip(components, others * len(components)):  # green is the reward's
            axes[0].plot(steps, series(key), lw=1, ls="--", color=color, label=key[len("env/reward/"):-len("_mean")])
        axes[0].legend(fontsize=8)
    axes[0].set_title("reward (env/reward_mean ± std" + (", components" if len(components) > 1 else "") + ")")
    axes[1].plot(steps, series("objective/kl"), color="tab:red", label="train (objective/kl)")
    if val_keys:
        ok = ~np.isnan(series("val/kl_to_ref"))
        axes[1].plot(steps[ok], series("val/kl_to_ref")[ok], "o-", color="tab:purple", ms=3,
                     label="validation (val/kl_to_ref)")
        axes[1].legend(fontsize=8)
    axes[1].axhline(0, color="grey", lw=0.5)
    axes[1].set_title("KL to reference (nats/seq)")
    axes[2].plot(steps, series("objective/kl_coef"), color="tab:blue")
    axes[2].set_ylim(bottom=0, top=max(1e-3, float(np.nanmax(series("objective/kl_coef")))) * 1.5)
    axes[2].set_title("KL coefficient (objective/kl_coef)")
    missed = {k for r in rows for k in r if k.startswith("val/") and k.endswith("/missed_rate")}
    for key, color in zip(val_keys, plt.rcParams["axes.prop_cycle"].by_key()["color"] * len(val_keys)):
        judge = key.split("/")[1]
        ok = ~np.isnan(series(key))
        axes[3].plot(steps[ok], series(key)[ok], "o-", ms=3, color=color, label=judge)
        if f"val/{judge}/missed_rate" in missed:  # what the reward model passes and this judge flags
            rate = series(f"val/{judge}/missed_rate")
            ok = ~np.isnan(rate)
            axes[3].plot(steps[ok], rate[ok], "x--", ms=4, lw=1, color=color, label=f"{judge} missed_rate")
    if val_keys:
        axes[3].set_ylim(0, 1)
        axes[3].set_title("validation: toxicity_mean, missed_rate (--)" if missed else
                          "validation toxicity (val/<judge>/toxicity_mean)")
        axes[3].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("PPO step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_histograms(toxicity: dict[str, dict[str, Sequence[float]]], path: str, threshold: float) -> str:
    """Toxicity before vs after, one panel per judge. `toxicity`: {judge: {variant: [P(toxic)]}}."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(toxicity), figsize=(4.2 * len(toxicity), 3.4), squeeze=False)
    bins = np.linspace(0, 1, 21)
    n = 0
    for ax, (judge, variants) in zip(axes[0], toxicity.items()):
        for variant, color in (("before", "tab:red"), ("after", "tab:blue")):
            tox = variants[variant]
            n = len(tox)
            ax.hist(tox, bins=bins, alpha=0.5, color=color, label=f"{variant} (mean {np.mean(tox):.2f})")
        ax.axvline(threshold, color="grey", ls="--", lw=1)
        ax.set_title(f"judge: {judge}")
        ax.set_xlabel("P(toxic)")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(f"responses (of {n})")
    fig.tight_layout()
    return save_figure(fig, path)


def _place_labels(fig, ax, items: list[tuple[str, float, float]]) -> None:
    """Label each point, trying offsets around it until the label overlaps no earlier label."""
    renderer = fig.canvas.get_renderer()
    offsets = [(6, 5, "left"), (6, -13, "left"), (-6, 5, "right"), (-6, -13, "right"),
               (6, 17, "left"), (6, -25, "left"), (-6, 17, "right"), (-6, -25, "right")]
    placed = []
    for label, x, y in items:
        for dx, dy, ha in offsets:
            text = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=8, ha=ha)
            box = text.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
            text.remove()
        else:  # crowded everywhere: the first place
            text = ax.annotate(label, (x, y), xytext=offsets[0][:2], textcoords="offset points", fontsize=8)
            box = text.get_window_extent(renderer)
        placed.append(box)


def plot_pareto(path: str, labels: list[str], xs: list[float], ys: list[float], xerr: list[float],
                yerr: list[float], colour: list[float | None], front: list[bool], *, xlabel: str, ylabel: str,
                colour_label: str, title: str) -> str:
    """A scatter of settings (one point each, error bars where any is non-zero), coloured by
    `colour` when every point has one, the front marked and every point labelled."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 6))
    ax.axhline(0, color="grey", lw=0.6)
    ax.axvline(0, color="grey", lw=0.6)
    if any(xerr) or any(yerr):
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="none", ecolor="0.6", elinewidth=1, capsize=2, zorder=1,
                    label="± std over seeds")
    if all(c is not None for c in colour):
        sc = ax.scatter(xs, ys, c=colour, cmap="viridis", s=70, edgecolors="k", linewidths=0.5, zorder=2)
        fig.colorbar(sc, ax=ax).set_label(colour_label)
    else:
        ax.scatter(xs, ys, color="tab:blue", s=70, edgecolors="k", linewidths=0.5, zorder=2)
    on_front = sorted((x, y) for x, y, f in zip(xs, ys, front) if f)
    if on_front:
        ax.plot(*zip(*on_front), "--", color="tab:red", lw=1.2, zorder=1, label="Pareto front")
        ax.scatter(*zip(*on_front), s=190, facecolors="none", edgecolors="tab:red", linewidths=1.5, zorder=3)
    ax.legend(loc="best", fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(0.2)
    fig.tight_layout()
    _place_labels(fig, ax, list(zip(labels, xs, ys)))
    return save_figure(fig, path, dpi=120)
