"""Reports of a study: per-arm mean ± sd, paired differences to the baseline with 95% CIs, a forest plot.

Every table leads with the study's primary metric, declared before the runs (default: the held-out average,
the mean of every retrieval recall and zero-shot top-1 a run has, as DataComp averages its tasks); the
retrieval mean and the zero-shot mean stand beside it. The seeds won and the verdict are on the primary.
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .arms import StudyError
from .stats import PairedDiff, mean_sd, paired_difference

__all__ = ["METRICS", "RECALL_KEYS", "ZEROSHOT_KEYS", "AGGREGATES", "PRIMARY_CHOICES", "DEFAULT_PRIMARY",
           "aggregate", "mean_recall", "check_primary", "metric_title", "describe_primary", "column_keys",
           "summarize_runs", "markdown", "diff_cell", "is_control", "forest_figure", "forest_plot", "chance_levels",
           "chance_from_runs", "PairedDiff"]

METRICS = [  # (key, column title)
    ("i2t_R@1", "i→t R@1"), ("i2t_R@5", "i→t R@5"), ("i2t_R@10", "i→t R@10"),
    ("t2i_R@1", "t→i R@1"), ("t2i_R@5", "t→i R@5"), ("t2i_R@10", "t→i R@10"),
    ("clipart_zeroshot", "clip-art zero-shot"), ("fashion_mnist_zeroshot", "Fashion-MNIST zero-shot"),
]
RECALL_KEYS = [k for k, _ in METRICS[:6]]
ZEROSHOT_KEYS = [k for k, _ in METRICS[6:]]
AGGREGATES = {  # key: (column title, the metrics it averages, each one a run has)
    "heldout_average": ("held-out average", RECALL_KEYS + ZEROSHOT_KEYS),
    "retrieval_mean": ("retrieval mean", RECALL_KEYS),
    "zeroshot_mean": ("zero-shot mean", ZEROSHOT_KEYS),
}
PRIMARY_CHOICES = [*AGGREGATES, *(k for k, _ in METRICS)]
DEFAULT_PRIMARY = "heldout_average"


def aggregate(metrics: dict, key: str) -> Optional[float]:
    """An aggregate of :data:`AGGREGATES` over the metrics ``metrics`` has (fractions); None if it has none."""
    present = [metrics[k] for k in AGGREGATES[key][1] if k in metrics]
    return sum(present) / len(present) if present else None


def mean_recall(metrics: dict) -> float:
    """The mean of the six held-out recalls (i->t and t->i R@1/5/10), as a fraction: the retrieval mean."""
    return sum(metrics[k] for k in RECALL_KEYS) / len(RECALL_KEYS)


def check_primary(key: str) -> str:
    """``key`` if it names a primary metric, else a one-line :class:`StudyError` naming the choices."""
    if key not in PRIMARY_CHOICES:
        raise StudyError(f"--primary {key!r}: not a metric of the study; choose one of {', '.join(PRIMARY_CHOICES)}")
    return key


def metric_title(key: str) -> str:
    """The column title of a metric or an aggregate."""
    return AGGREGATES[key][0] if key in AGGREGATES else dict(METRICS)[key]


def describe_primary(key: str) -> str:
    """One line saying what the primary metric is."""
    if key == "heldout_average":
        return ("the held-out average (the mean of every retrieval recall and every zero-shot top-1 a run has, as "
                "DataComp averages its tasks)")
    if key == "retrieval_mean":
        return "the retrieval mean (the mean of the six recalls: i→t and t→i R@1/5/10)"
    if key == "zeroshot_mean":
        return "the zero-shot mean (the mean of the zero-shot top-1s a run has: clip art, Fashion-MNIST)"
    return f"{metric_title(key)} (`{key}`)"


def column_keys(primary: str) -> List[str]:
    """Every column a report can have: the primary first, then the aggregates, then the single metrics."""
    return [primary] + [k for k in [*AGGREGATES, *(k for k, _ in METRICS)] if k != primary]


def _with_aggregates(metrics: dict) -> dict:
    out = dict(metrics)
    for key in AGGREGATES:
        value = aggregate(metrics, key)
        if value is not None:
            out[key] = value
    return out


def summarize_runs(runs: Sequence[dict], arms: Sequence[str], baseline: str, primary: str = DEFAULT_PRIMARY) -> dict:
    """``{"arms": {arm: {metric: {mean, sd, n}}}, "paired": {arm: {metric: PairedDiff as dict}}, "primary": key}``
    (values in %; the metrics and the aggregates of :data:`AGGREGATES`, the primary first)."""
    check_primary(primary)
    by_arm: Dict[str, Dict[int, dict]] = {a: {} for a in arms}
    for r in runs:
        if "eval" in r and r["arm"] in by_arm:
            by_arm[r["arm"]][r["seed"]] = _with_aggregates(r["eval"])
    keys = column_keys(primary)
    summary: dict = {"arms": {}, "paired": {}, "baseline": baseline, "primary": primary}
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
    summary["metrics_present"] = [k for k, _ in METRICS if any(k in m for ms in by_arm.values() for m in ms.values())]
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


def _columns_note(summary: dict) -> str:
    """What the aggregate columns average, over the metrics these runs have."""
    present = summary.get("metrics_present", [k for k, _ in METRICS])
    zeroshot = [metric_title(k) for k in ZEROSHOT_KEYS if k in present]
    missing = [metric_title(k) for k, _ in METRICS if k not in present]
    n_recalls = sum(k in present for k in RECALL_KEYS)
    parts = ([f"{n_recalls} retrieval recalls"] if n_recalls else []) + [f"{t} top-1" for t in zeroshot]
    note = (f"Columns: held-out average = the mean of the {len(present)} metrics these runs have "
            f"({', '.join(parts)}); retrieval mean = the mean of the six recalls; zero-shot mean = the mean of "
            + (f"the zero-shot top-1s ({', '.join(zeroshot)})" if zeroshot else "the zero-shot top-1s (none measured)"))
    if missing:
        note += f". Not measured in these runs, so in no average: {', '.join(missing)}"
    return note + f". Primary: {metric_title(summary['primary'])}."


def markdown(summary: dict, arms: Sequence[str], chance: Dict[str, float], header: Sequence[str]) -> str:
    """The study's ``results.md``: ``header`` lines, the per-arm table, the paired-difference table (the primary
    metric first; wins and verdict on it)."""
    baseline, primary = summary["baseline"], summary.get("primary", DEFAULT_PRIMARY)
    cols = [k for k in column_keys(primary) if any(k in summary["arms"][a] for a in arms)] or [primary]
    titles = [metric_title(k) + (" (primary)" if k == primary else "") for k in cols]
    name = metric_title(primary)
    lines = [*header, "", _columns_note(summary), "", "Per arm, % (mean ± sd over seeds):", "",
             "| arm | " + " | ".join(titles) + " | train time (s) |",
             "|---|" + "---|" * (len(cols) + 1)]
    for arm in arms:
        s = summary["arms"][arm]
        time_cell = f"{s['train_seconds']['mean']:.0f}" if "train_seconds" in s else "–"
        lines.append(f"| {arm}{' (baseline)' if arm == baseline else ''} | "
                     + " | ".join(_cell(s.get(k)) for k in cols) + f" | {time_cell} |")
    if chance:
        lines.append("| *chance* | " + " | ".join(f"{chance[k]:.1f}" if k in chance else "" for k in cols) + " | |")
    lines += ["", f"Paired difference to `{baseline}`, points (mean [95% CI over seeds], t interval); "
                  f"wins = seeds where the arm scored higher; wins and verdict on the primary metric, {name}:", "",
              "| arm | " + " | ".join(titles) + f" | wins ({name}) | verdict ({name}) |",
              "|---|" + "---|" * (len(cols) + 2)]
    for arm in arms:
        if arm == baseline:
            continue
        p = summary["paired"].get(arm, {})
        main = p.get(primary)
        wins = f"{main['wins']}/{main['n']}" if main else "–"
        lines.append(f"| {arm} | " + " | ".join(diff_cell(p.get(k)) for k in cols)
                     + f" | {wins} | {main['verdict'] if main else '–'} |")
    return "\n".join(lines) + "\n"


def is_control(arm: str, controls: Sequence[str] = ()) -> bool:
    """Whether ``arm`` is a control (an arm that should match the baseline: its bar shows the noise, not an effect):
    named in ``controls`` or with "control" in its name."""
    return arm in controls or "control" in arm.lower()


def _extent(d: dict) -> Tuple[float, float]:
    return (d["mean"], d["mean"]) if d["low"] is None else (d["low"], d["high"])


def _limits(summary: dict, arms: Sequence[str], keys: Sequence[str]) -> Tuple[float, float]:
    """x limits holding 0 and every interval of ``arms`` on ``keys``, with a margin."""
    ends = [0.0] + [x for a in arms for k in keys if summary["paired"].get(a, {}).get(k)
                    for x in _extent(summary["paired"][a][k])]
    low, high = min(ends), max(ends)
    pad = 0.08 * (high - low) or 1.0
    return low - pad, high + pad


def _score(summary: dict, key: str) -> str:
    s = summary["arms"].get(summary["baseline"], {}).get(key)
    if not s:
        return "n/a"
    return f"{s['mean']:.1f}" + (f" ± {s['sd']:.1f}" if s.get("sd") is not None else "") + " %"


def forest_figure(summary: dict, arms: Sequence[str], title: str, controls: Sequence[str] = ()):
    """The forest plot as a matplotlib figure (see :func:`forest_plot`); ``fig.panel_limits``: x limits per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baseline, primary = summary["baseline"], summary.get("primary", DEFAULT_PRIMARY)
    others = [a for a in arms if a != baseline]
    tested = [a for a in others if not is_control(a, controls)]
    ctrl = [a for a in others if is_control(a, controls)]
    rows = tested + ctrl
    ys = list(range(len(tested))) + [len(tested) + 0.6 + i for i in range(len(ctrl))]  # controls apart, below
    keys = [k for k in column_keys(primary) if any(k in summary["paired"].get(a, {}) for a in others)] or [primary]
    rest = [k for k in keys if k != primary]
    shared = _limits(summary, others, rest or [primary])
    own = _limits(summary, others, [primary])
    # the primary shares the panels' scale unless that would squeeze it to under half the width
    primary_own = bool(rest) and (own[1] - own[0]) < 0.5 * (shared[1] - shared[0])
    ncols = 3
    nrest = (len(rest) + ncols - 1) // ncols
    row_h = 0.3 * len(rows) + 1.3
    fig = plt.figure(figsize=(5.2 * ncols, row_h * 1.4 + row_h * nrest + 1.2), layout="constrained")
    grid = fig.add_gridspec(1 + nrest, ncols, height_ratios=[1.4] + [1] * nrest)
    axes = {primary: fig.add_subplot(grid[0, :])}
    for i, key in enumerate(rest):
        axes[key] = fig.add_subplot(grid[1 + i // ncols, i % ncols])
    for key, ax in axes.items():
        is_primary = key == primary
        for y, arm in zip(ys, rows):
            d = summary["paired"].get(arm, {}).get(key)
            if not d:
                continue
            if arm in ctrl:
                color, face = "tab:blue", "white"
            else:
                color = "tab:green" if d["low"] is not None and d["low"] > 0 else \
                    "tab:red" if d["high"] is not None and d["high"] < 0 else "tab:gray"
                face = color
            if d["low"] is not None:
                ax.plot([d["low"], d["high"]], [y, y], color=color, lw=3 if is_primary else 2)
            ax.plot([d["mean"]], [y], "o", color=color, markerfacecolor=face, ms=8 if is_primary else 6)
            if is_primary:
                ax.annotate(diff_cell(d), (1.0, y), xycoords=("axes fraction", "data"), xytext=(6, 0),
                            textcoords="offset points", va="center", fontsize=9, color=color)
        if ctrl:
            ax.axhline(len(tested) - 0.2, color="tab:blue", lw=0.8, ls="--")
            ax.axhspan(len(tested) - 0.2, ys[-1] + 0.5, color="tab:blue", alpha=0.06, lw=0)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlim(*(own if is_primary and primary_own else shared))
        ax.set_ylim(ys[-1] + 0.5, -0.5)
        ax.set_yticks(ys)
        ax.set_yticklabels([a + (" (control)" if a in ctrl else "") for a in rows],
                           fontsize=10 if is_primary else 9)
        for label, arm in zip(ax.get_yticklabels(), rows):
            if arm in ctrl:
                label.set_color("tab:blue")
                label.set_fontstyle("italic")
        name = metric_title(key) + (" (primary)" if is_primary else "")
        note = ": own x scale, zoomed in; the panels below share a wider one" if is_primary and primary_own else ""
        ax.set_title(f"{name}{note}; {baseline} scores {_score(summary, key)}", fontsize=11 if is_primary else 9,
                     fontweight="bold" if is_primary else "normal")
        ax.set_xlabel(f"← worse    points vs {baseline}    better →", fontsize=10 if is_primary else 8)
        ax.grid(axis="x", color="0.9", lw=0.6)
        ax.set_axisbelow(True)
    lines = [title, f"baseline {baseline}: {metric_title(primary)} {_score(summary, primary)}",
             "dot: mean paired difference; bar: 95% CI over seeds; green / red: CI excludes 0"
             + ("; blue, hollow, apart: control (should match the baseline: its bar is the noise)" if ctrl else "")]
    if rest:
        lines.append("the metric panels share one x scale" + ("; the primary has its own" if primary_own
                                                              else ", the primary's too"))
    fig.suptitle("\n".join(lines), fontsize=10)
    fig.panel_limits = {key: tuple(map(float, ax.get_xlim())) for key, ax in axes.items()}
    return fig


def forest_plot(path: Path, summary: dict, arms: Sequence[str], title: str,
                controls: Sequence[str] = ()) -> Dict[str, Tuple[float, float]]:
    """Each arm's paired difference to the baseline with its 95% CI, arms as rows: the primary metric on top (its
    baseline score in the title), then one panel per metric on one shared x scale (the primary on it too unless
    that squeezes it, which its title then says); controls (:func:`is_control`) apart at the bottom, labelled.
    Returns the x limits of each metric's panel."""
    import matplotlib.pyplot as plt

    fig = forest_figure(summary, arms, title, controls)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return fig.panel_limits


def _chance(n_images: int, n_classes: Optional[int], fashion: bool) -> Dict[str, float]:
    out = {f"{d}_R@{k}": 100 * min(k, n_images) / n_images for d in ("i2t", "t2i") for k in (1, 5, 10)}
    if n_classes:
        out["clipart_zeroshot"] = 100 / n_classes
    if fashion:
        out["fashion_mnist_zeroshot"] = 10.0
    return _with_aggregates(out)


def chance_levels(data: dict) -> Dict[str, float]:
    """Recall@k and zero-shot accuracy of a random ranking / guess, and their aggregates, in %."""
    return _chance(len(data["images"]), len(data.get("classes") or ()), "fashion" in data)


def chance_from_runs(runs: Sequence[dict]) -> Dict[str, float]:
    """:func:`chance_levels` from recorded evaluations (their ``heldout_images``, ``clipart_classes``); {} if none
    says how many images it ranked."""
    for r in runs:
        e = r.get("eval", {})
        if e.get("heldout_images"):
            return _chance(e["heldout_images"], e.get("clipart_classes") if "clipart_zeroshot" in e else None,
                           "fashion_mnist_zeroshot" in e)
    return {}
