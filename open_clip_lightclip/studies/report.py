"""Reports of several runs: a markdown table (mean ± sd over seeds), plain verdicts, a PNG of curves and recall."""
import os
from pathlib import Path
from typing import List

from .runs import cpu_seconds

__all__ = ["METRICS", "summarize", "plot"]

METRICS = [  # (key, column title)
    ("i2t_R@1", "i→t R@1"), ("i2t_R@5", "i→t R@5"), ("i2t_R@10", "i→t R@10"),
    ("t2i_R@1", "t→i R@1"), ("t2i_R@5", "t→i R@5"), ("t2i_R@10", "t→i R@10"),
    ("clipart_zeroshot", "clip-art zero-shot"), ("fashion_mnist_zeroshot", "Fashion-MNIST zero-shot"),
]


def _mean_sd(values: List[float]):
    import statistics

    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _fmt(values: List[float], percent: bool = True) -> str:
    mean, sd = _mean_sd(values)
    if mean is None:
        return "–"
    scale = 100 if percent else 1
    return f"{mean * scale:.1f}" + (f" ± {sd * scale:.1f}" if sd is not None else "")


def summarize(args, info: dict, runs: List[dict], skipped: List[str], data: dict, wall: float) -> str:
    arms = [a for a in dict.fromkeys(r["arm"] for r in runs)]
    n_seeds = len(args.seeds)
    lines = [
        "# open-clip-lightclip demo results",
        "",
        f"Model `{args.model}` at {args.image_size} px, trained from scratch through `open_clip_train.main`; "
        f"every arm: {args.epochs} epochs x {args.steps_per_epoch} steps, batch {args.batch_size}, "
        f"lr {args.lr}, warmup {args.warmup}; seeds {', '.join(map(str, args.seeds))}.",
        f"Data: {info['written']['train']} train / {info['written']['heldout']} held-out captioned images "
        f"({info.get('source') or 'shards'}; {info.get('skipped_broken', 0)} broken image(s) skipped).",
        "",
        "Numbers are % (mean" + (" ± standard deviation over seeds" if n_seeds > 1 else ", one seed") + ").",
        "",
        "| arm | " + " | ".join(title for _, title in METRICS) + " | train time (s) | train CPU (s) |",
        "|---|" + "---|" * (len(METRICS) + 2),
    ]
    for arm in arms:
        rs = [r for r in runs if r["arm"] == arm]
        cells = [_fmt([r["eval"][key] for r in rs if key in r["eval"]]) for key, _ in METRICS]
        cells.append(_fmt([r["train_seconds"] for r in rs], percent=False))
        cells.append(_fmt([r["train_cpu_seconds"] for r in rs if "train_cpu_seconds" in r], percent=False))
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    n = len(data["images"])
    chance = [f"{100 * min(k, n) / n:.1f}" for k in (1, 5, 10)] * 2
    chance.append(f"{100 / len(data['classes']):.1f}" if data["classes"] else "–")
    chance.append("10.0" if "fashion" in data else "–")
    lines.append("| *chance* | " + " | ".join(chance) + " | | |")
    lines.append("")
    dupes = len(data["captions"]) - len(set(data["captions"])) if "captions" in data else 0
    lines.append(f"Recall@k: the true pair ranks in the top k of {n} held-out pairs; a candidate that scores "
                 f"exactly as high as the true pair (an identical caption: {dupes} held-out captions repeat "
                 "another) does not push it down, so these numbers can be a little higher than the trainer's "
                 "own per-epoch `--val-data` recall in results.png, which breaks such ties arbitrarily.")
    if data["classes"]:
        cats = [c for c in data["categories"] if c in data["classes"]]
        majority = max(cats.count(c) for c in data["classes"]) / len(cats)
        lines.append(f"Clip-art zero-shot: {len(data['classes'])} categories ({', '.join(data['classes'])}), "
                     f"{len(cats)} held-out images; always answering the largest category scores "
                     f"{100 * majority:.1f}%.")
    if "fashion" in data:
        lines.append(f"Fashion-MNIST zero-shot: {len(data['fashion'][0])} test images, 10 classes, "
                     "a different domain (grey photos of clothes); no training image comes from it.")
    if skipped:
        lines.append(f"Skipped arms (loss not registered in this install): {', '.join(skipped)}.")
    # plain verdicts against the plain CLIP arm, on the mean of the six recall numbers
    if "clip" in arms and len(arms) > 1:
        def mean_recall(r):
            return sum(r["eval"][k] for k, _ in METRICS[:6]) / 6

        base = [mean_recall(r) for r in runs if r["arm"] == "clip"]
        b_mean, b_sd = _mean_sd(base)
        lines.append("")
        lines.append("Against `clip` (mean of the six recall numbers):")
        for arm in arms:
            if arm == "clip":
                continue
            vals = [mean_recall(r) for r in runs if r["arm"] == arm]
            mean, sd = _mean_sd(vals)
            diff = 100 * (mean - b_mean)
            noise = 100 * max(b_sd or 0, sd or 0)
            if abs(diff) < 0.05:
                verdict = "the same"
            elif n_seeds > 1 and abs(diff) <= noise:
                verdict = "within the seed spread: no measurable difference"
            else:
                verdict = "better" if diff > 0 else "worse"
                if n_seeds == 1:
                    verdict += " (one seed: use --seeds 0 1 2 to see the spread)"
            lines.append(f"- `{arm}`: {diff:+.1f} points, {verdict}.")
    reused = " (finished runs were reused, so this is not the time of a fresh run)" \
        if any(r.get("reused") for r in runs) else ""
    cpu = cpu_seconds(False) + cpu_seconds(True)
    lines += ["", f"Whole demo wall time: {wall / 60:.1f} min{reused}; CPU time (all processes): {cpu / 60:.1f} min "
                  f"on {os.cpu_count()} cores.", "", f"Command: `{args.command_line}`", ""]
    return "\n".join(lines)


def plot(path: Path, runs: List[dict], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys(r["arm"] for r in runs))
    colors = {a: plt.cm.tab10(i % 10) for i, a in enumerate(arms)}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    ax = axes[0]
    for r in runs:
        c = r["curves"]
        if c["step"]:
            ax.plot(c["step"], c["loss"], color=colors[r["arm"]], alpha=0.85, lw=1,
                    label=r["arm"] if r["seed"] == args.seeds[0] else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (each objective on its own scale)")
    ax.set_yscale("log")
    ax.set_title("training loss")
    ax.legend()
    ax = axes[1]
    for r in runs:
        val = r["curves"]["val"]
        if val:
            ep = [v["epoch"] for v in val]
            mean5 = [(v.get("image_to_text_R@5", 0) + v.get("text_to_image_R@5", 0)) / 2 * 100 for v in val]
            ax.plot(ep, mean5, marker="o", color=colors[r["arm"]], label=r["arm"] if r["seed"] == args.seeds[0] else None)
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("held-out recall@5, mean of i→t and t→i (%)")
    ax.set_title("held-out retrieval during training")
    ax.legend()
    ax = axes[2]
    keys = [k for k, _ in METRICS[:6]]
    width = 0.8 / max(1, len(arms))
    for i, arm in enumerate(arms):
        rs = [r for r in runs if r["arm"] == arm]
        means, sds = [], []
        for k in keys:
            m, s = _mean_sd([r["eval"][k] * 100 for r in rs])
            means.append(m)
            sds.append(s or 0)
        xs = [j + (i - (len(arms) - 1) / 2) * width for j in range(len(keys))]
        ax.bar(xs, means, width, yerr=sds, color=colors[arm], label=arm, capsize=2)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([t for _, t in METRICS[:6]], rotation=30)
    ax.set_ylabel("%")
    ax.set_title("final held-out recall")
    ax.legend()
    fig.suptitle(f"{args.model}, {args.epochs}x{args.steps_per_epoch} steps, batch {args.batch_size}, "
                 f"{args.image_size} px, seeds {' '.join(map(str, args.seeds))}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
