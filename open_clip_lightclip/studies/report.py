"""Reports of a study: per-arm mean ± sd, paired differences to the baseline with 95% CIs, a forest plot."""
from pathlib import Path
from typing import Dict, Sequence

from .stats import PairedDiff, mean_sd, paired_difference

__all__ = ["METRICS", "RECALL_KEYS", "MEAN_RECALL", "mean_recall", "summarize_runs", "markdown", "diff_cell",
           "forest_plot", "chance_levels", "PairedDiff"]

METRICS = [  # (key, column title)
    ("i2t_R@1", "i→t R@1"), ("i2t_R@5", "i→t R@5"), ("i2t_R@10", "i→t R@10"),
    ("t2i_R@1", "t→i R@1"), ("t2i_R@5", "t→i R@5"), ("t2i_R@10", "t→i R@10"),
    ("clipart_zeroshot", "clip-art zero-shot"), ("fashion_mnist_zeroshot", "Fashion-MNIST zero-shot"),
]
RECALL_KEYS = [k for k, _ in METRICS[:6]]
MEAN_RECALL = ("mean_recall", "mean of the six recalls")


def mean_recall(metrics: dict) -> float:
    """The mean of the six held-out recalls (i->t and t->i R@1/5/10), as a fraction."""
    return sum(metrics[k] for k in RECALL_KEYS) / len(RECALL_KEYS)


def _with_mean_recall(metrics: dict) -> dict:
    out = dict(metrics)
    if all(k in out for k in RECALL_KEYS):
        out[MEAN_RECALL[0]] = mean_recall(out)
    return out


def summarize_runs(runs: Sequence[dict], arms: Sequence[str], baseline: str) -> dict:
    """``{"arms": {arm: {metric: {mean, sd, n}}}, "paired": {arm: {metric: PairedDiff as dict}}}`` (values in %)."""
    by_arm: Dict[str, Dict[int, dict]] = {a: {} for a in arms}
    for r in runs:
        if "eval" in r and r["arm"] in by_arm:
            by_arm[r["arm"]][r["seed"]] = _with_mean_recall(r["eval"])
    keys = [MEAN_RECALL[0]] + [k for k, _ in METRICS]
    summary: dict = {"arms": {}, "paired": {}, "baseline": baseline}
    for arm in arms:
        summary["arms"][arm] = {}
        for key in keys:
            values = [100 * m[key] for m in by_arm[arm].values() if key in m]
            mean, sd = mean_sd(values)
            if mean is not None:
                summary["arms"][arm][key] = {"mean": mean, "sd": sd, "n": len(values)}
        seconds = [r["train_seconds"] for r in runs if r["arm"] == arm and "train_seconds" in r]
        if seconds:
            summary["arms"][arm]["train_seconds"] = {"mean": mean_sd(seconds)[0], "n": len(seconds)}
    for arm in arms:
        if arm == baseline:
            continue
        summary["paired"][arm] = {}
        for key in keys:
            a = {s: 100 * m[key] for s, m in by_arm[arm].items() if key in m}
            b = {s: 100 * m[key] for s, m in by_arm[baseline].items() if key in m}
            d = paired_difference(a, b)
            if d is not None:
                summary["paired"][arm][key] = {**d.__dict__, "verdict": d.verdict}
    return summary


def _cell(stat: dict) -> str:
    if not stat:
        return "–"
    return f"{stat['mean']:.1f}" + (f" ± {stat['sd']:.1f}" if stat.get("sd") is not None else "")


def diff_cell(d: dict) -> str:
    """A paired difference as the tables print it: ``+0.3 [-0.4, +1.0]`` (points; no interval for one seed)."""
    if not d:
        return "–"
    if d["low"] is None:
        return f"{d['mean']:+.1f}"
    return f"{d['mean']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]"


def markdown(summary: dict, arms: Sequence[str], chance: Dict[str, float], header: Sequence[str]) -> str:
    """The study's ``results.md``: ``header`` lines, the per-arm table, the paired-difference table."""
    baseline = summary["baseline"]
    cols = [MEAN_RECALL] + [m for m in METRICS if any(m[0] in summary["arms"][a] for a in arms)]
    lines = [*header, "", "Per arm, % (mean ± sd over seeds):", "",
             "| arm | " + " | ".join(t for _, t in cols) + " | train time (s) |",
             "|---|" + "---|" * (len(cols) + 1)]
    for arm in arms:
        s = summary["arms"][arm]
        time_cell = f"{s['train_seconds']['mean']:.0f}" if "train_seconds" in s else "–"
        lines.append(f"| {arm}{' (baseline)' if arm == baseline else ''} | "
                     + " | ".join(_cell(s.get(k)) for k, _ in cols) + f" | {time_cell} |")
    if chance:
        lines.append("| *chance* | " + " | ".join(f"{chance[k]:.1f}" if k in chance else "" for k, _ in cols) + " | |")
    lines += ["", f"Paired difference to `{baseline}`, points (mean [95% CI over seeds], t interval); "
                  "wins = seeds where the arm scored higher:", "",
              "| arm | " + " | ".join(t for _, t in cols) + " | wins (mean recall) | verdict (mean recall) |",
              "|---|" + "---|" * (len(cols) + 2)]
    for arm in arms:
        if arm == baseline:
            continue
        p = summary["paired"].get(arm, {})
        main = p.get(MEAN_RECALL[0])
        wins = f"{main['wins']}/{main['n']}" if main else "–"
        lines.append(f"| {arm} | " + " | ".join(diff_cell(p.get(k)) for k, _ in cols)
                     + f" | {wins} | {main['verdict'] if main else '–'} |")
    return "\n".join(lines) + "\n"


def forest_plot(path: Path, summary: dict, arms: Sequence[str], title: str) -> None:
    """One panel per metric: each arm's paired difference to the baseline with its 95% CI, and a zero line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [a for a in arms if a != summary["baseline"]]
    keys = [MEAN_RECALL] + [m for m in METRICS if any(m[0] in summary["paired"].get(a, {}) for a in others)]
    ncols = min(3, len(keys))
    nrows = (len(keys) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 0.5 * len(others) * nrows + 1.6 * nrows),
                             squeeze=False)
    for ax, (key, label) in zip(axes.flat, keys):
        for y, arm in enumerate(others):
            d = summary["paired"].get(arm, {}).get(key)
            if not d:
                continue
            color = "tab:green" if d["low"] is not None and d["low"] > 0 else \
                "tab:red" if d["high"] is not None and d["high"] < 0 else "tab:gray"
            if d["low"] is not None:
                ax.plot([d["low"], d["high"]], [y, y], color=color, lw=2)
            ax.plot([d["mean"]], [y], "o", color=color)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(others)))
        ax.set_yticklabels(others)
        ax.invert_yaxis()
        ax.set_title(label, fontsize=10)
        ax.set_xlabel(f"points vs {summary['baseline']}")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(title + "\n(dot: mean paired difference; bar: 95% CI over seeds; green/red: CI excludes 0)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def chance_levels(data: dict) -> Dict[str, float]:
    """Recall@k and zero-shot accuracy of a random ranking / guess, in %."""
    n = len(data["images"])
    out = {f"{d}_R@{k}": 100 * min(k, n) / n for d in ("i2t", "t2i") for k in (1, 5, 10)}
    out[MEAN_RECALL[0]] = sum(out[k] for k in RECALL_KEYS) / len(RECALL_KEYS)
    if data.get("classes"):
        out["clipart_zeroshot"] = 100 / len(data["classes"])
    if "fashion" in data:
        out["fashion_mnist_zeroshot"] = 10.0
    return out

