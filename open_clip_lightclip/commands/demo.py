"""``open-clip-lightclip demo``: train and compare objectives on real captioned images, on a CPU.

1. makes sure the Debian clip art and Fashion-MNIST are there (``apt-get`` when root);
2. builds webdataset shards (train / held out) with :func:`open_clip_lightclip.datasets.build_shards`;
3. trains one run per objective ("arm") and seed through the real ``open_clip_train.main``, all
   at the same budget, with the held-out split as ``--val-data`` (recall curves per epoch);
4. evaluates each final checkpoint: image->text and text->image recall@1/5/10 on the held-out
   split, zero-shot classification over the clip-art categories and over Fashion-MNIST's test
   split;
5. writes ``results.md`` (a markdown table, mean and spread over seeds), ``results.json`` and
   ``results.png`` (training curves and recall) to the output folder.
"""
import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from ..trainer_cmd import trainer_command

DEFAULT_ARMS = ("clip", "lightclip", "cliplite")
APT_LINE = "apt-get install -y openclipart-png openclipart-svg dataset-fashion-mnist"
# categories that are not about what is in the picture
IGNORED_CATEGORIES = {"unsorted", "special", "misc", "miscellaneous", "other"}
CLIPART_TEMPLATES = ("{}.", "a clip art of {}.", "a drawing of {}.", "an illustration of {}.")
FASHION_TEMPLATES = ("a photo of a {}.", "a {}.", "a picture of a {}.", "a product photo of a {}.")
METRICS = [  # (key, column title)
    ("i2t_R@1", "i→t R@1"), ("i2t_R@5", "i→t R@5"), ("i2t_R@10", "i→t R@10"),
    ("t2i_R@1", "t→i R@1"), ("t2i_R@5", "t→i R@5"), ("t2i_R@10", "t→i R@10"),
    ("clipart_zeroshot", "clip-art zero-shot"), ("fashion_mnist_zeroshot", "Fashion-MNIST zero-shot"),
]
_TRAIN_LINE = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+) \(\s*\d+%\)\].*?Batch \(t\): ([\d.]+).*? Loss: ([\d.eE+-]+)")


def cpu_seconds(children: bool = True) -> float:
    """CPU seconds (user + system) of this process, or of its finished children."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- data


def ensure_debian_data(need_clipart: bool, fashion_dir: Optional[Path], allow_apt: bool) -> bool:
    from ..datasets import OPENCLIPART_ROOT

    def missing():
        out = []
        if need_clipart and not (OPENCLIPART_ROOT / "png").is_dir():
            out.append("openclipart-png")
        if need_clipart and not (OPENCLIPART_ROOT / "svg").is_dir():
            out.append("openclipart-svg")
        if fashion_dir is not None and not (fashion_dir / "t10k-images-idx3-ubyte.gz").is_file():
            out.append("dataset-fashion-mnist")
        return out

    todo = missing()
    if not todo:
        return True
    can_apt = allow_apt and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get")
    if can_apt:
        log(f"installing Debian packages: {' '.join(todo)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "--no-install-recommends", *todo]
        if subprocess.call(cmd, env=env) != 0:
            subprocess.call(["apt-get", "update"], env=env)
            subprocess.call(cmd, env=env)
        todo = missing()
        if not todo:
            return True
    print(f"error: the demo needs the Debian packages {', '.join(todo)}; install them with:\n"
          f"  sudo {APT_LINE}\n(or point --data at shards made by `open-clip-lightclip build-shards`)",
          file=sys.stderr)
    return False


def prepare_shards(args, data: Path) -> Optional[dict]:
    from .. import datasets as ds

    info_path = data / "build_info.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        if info.get("image_size") != args.image_size or info.get("heldout_fraction") != args.heldout_fraction \
                or info.get("max_images", 0) != args.max_images:
            print(f"error: {data} holds shards built with other settings (image size {info.get('image_size')}, "
                  f"held-out fraction {info.get('heldout_fraction')}, max images {info.get('max_images', 0)}); "
                  f"delete it or choose another --out", file=sys.stderr)
            return None
        log(f"reusing shards in {data} ({info['written']['train']} train / {info['written']['heldout']} held out)")
        return info
    if any(data.glob("*.tar")):
        print(f"error: {data} holds shards but no build_info.json (an interrupted build?); delete it", file=sys.stderr)
        return None
    log(f"building shards from the clip art into {data} ({args.image_size} px)")
    stats = ds.BuildStats()
    records = list(ds.openclipart_records(stats=stats))
    if args.max_images:
        records = records[:args.max_images]
    info = ds.build_shards(records, data, image_size=args.image_size, heldout_fraction=args.heldout_fraction,
                           split_seed=0, samples_per_shard=1000, stats=stats, source="openclipart",
                           workers=args.build_workers, progress=True)
    info["max_images"] = args.max_images
    info_path.write_text(json.dumps(info, indent=1))
    log(f"shards: {info['written']['train']} train / {info['written']['heldout']} held out; "
        f"skipped {info['skipped_broken']} broken image(s), {info['skipped_no_caption']} without caption")
    return info


# ---------------------------------------------------------------- training


def run_arm(args, info: dict, arm: str, seed: int, logs: Path) -> Optional[dict]:
    """Train one arm through the real trainer (or reuse an identical finished run)."""
    name = f"{arm}-seed{seed}"
    run_dir = logs / name
    ckpt = run_dir / "checkpoints" / f"epoch_{args.epochs}.pt"
    cmd = trainer_command(
        info["train_data"], str(logs), name, model=args.model, loss=arm, batch_size=args.batch_size,
        epochs=args.epochs, lr=args.lr, warmup=args.warmup, seed=seed,
        extra=["--force-image-size", str(args.image_size), "--dataset-resampled",
               "--train-num-samples", str(args.steps_per_epoch * args.batch_size),
               "--val-data", info["heldout_data"], "--val-frequency", "1", "--save-frequency", "0",
               "--log-every-n-steps", str(args.log_every), *shlex.split(args.trainer_args)])
    record_path = run_dir / "demo_run.json"
    if ckpt.is_file() and record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("cmd", [])[1:] == cmd[1:]:
            log(f"{name}: reusing the finished run in {run_dir}")
            record["reused"] = True
            return record
    if run_dir.exists():
        # an interrupted run, or one with other settings: the trainer refuses to reuse the folder,
        # so move it aside (never delete what a run wrote)
        aside = run_dir.with_name(f"{name}.previous-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(aside)
        log(f"{name}: moved the earlier run folder aside to {aside}")
    total_steps = args.steps_per_epoch * args.epochs
    log(f"{name}: training {total_steps} steps (batch {args.batch_size}, {args.image_size} px)")
    log(f"  $ {shlex.join(cmd)}")
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    start, cpu_start = time.time(), cpu_seconds()
    tail: List[str] = []
    next_report = 0.0
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
    for line in proc.stdout:
        tail = (tail + [line.rstrip()])[-40:]
        m = _TRAIN_LINE.search(line)
        if m:
            epoch, done, per_epoch = int(m.group(1)), int(m.group(2)), int(m.group(3))
            step = epoch * args.steps_per_epoch + round(done / args.batch_size)
            frac = step / total_steps
            if frac >= next_report or step == total_steps:
                elapsed = time.time() - start
                eta = elapsed / max(frac, 1e-9) * (1 - frac)
                log(f"{name}: step {step}/{total_steps}  loss {float(m.group(5)):.4f}  "
                    f"{float(m.group(4)):.2f} s/step  elapsed {elapsed:.0f} s  eta {eta:.0f} s")
                next_report = frac + 0.1
        elif "image_to_text_R@1" in line and "Eval Epoch" in line:
            ep = re.search(r"Eval Epoch: (\d+)", line).group(1)
            vals = dict(re.findall(r"(\w+_R@\d+): ([\d.]+)", line))
            log(f"{name}: epoch {ep} held-out recall@5 i→t {float(vals.get('image_to_text_R@5', 0)):.3f} "
                f"t→i {float(vals.get('text_to_image_R@5', 0)):.3f}")
    rc = proc.wait()
    seconds = time.time() - start
    if rc != 0 or not ckpt.is_file():
        print(f"[demo] error: training {name} failed (exit {rc}); last lines:\n" + "\n".join(tail[-15:]),
              file=sys.stderr)
        return None
    record = {"arm": arm, "seed": seed, "cmd": cmd, "train_seconds": seconds,
              "train_cpu_seconds": cpu_seconds() - cpu_start, "checkpoint": str(ckpt),
              "run_dir": str(run_dir)}
    record_path.write_text(json.dumps(record, indent=1))
    log(f"{name}: done in {seconds:.0f} s ({record['train_cpu_seconds']:.0f} CPU s) -> {ckpt}")
    return record


def read_curves(run_dir: Path, steps_per_epoch: int, batch_size: int) -> dict:
    steps, losses = [], []
    out_log = run_dir / "out.log"
    if out_log.is_file():
        for line in out_log.read_text(errors="replace").splitlines():
            m = _TRAIN_LINE.search(line)
            if m:
                steps.append(int(m.group(1)) * steps_per_epoch + round(int(m.group(2)) / batch_size))
                losses.append(float(m.group(5)))
    val = []
    results = run_dir / "checkpoints" / "results.jsonl"
    if results.is_file():
        for line in results.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                val.append({"epoch": r.get("epoch"), **{k: r[k] for k in r if "_R@" in k}})
    return {"step": steps, "loss": losses, "val": val}


# ---------------------------------------------------------------- evaluation


def _encode_images(model, preprocess, images, batch_size: int = 256):
    import torch

    feats = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            batch = torch.stack([preprocess(im) for im in images[i:i + batch_size]])
            feats.append(torch.nn.functional.normalize(model.encode_image(batch), dim=-1))
    return torch.cat(feats)


def _encode_texts(model, tokenizer, texts, batch_size: int = 512):
    import torch

    feats = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            feats.append(torch.nn.functional.normalize(model.encode_text(tokenizer(texts[i:i + batch_size])), dim=-1))
    return torch.cat(feats)


def _classifier(model, tokenizer, classnames, templates):
    import torch

    weights = []
    for c in classnames:
        e = _encode_texts(model, tokenizer, [t.format(c) for t in templates]).mean(0)
        weights.append(e / e.norm())
    return torch.stack(weights)


def recall_at_k(sim, ks=(1, 5, 10)) -> dict:
    """Recall@k of a square similarity matrix whose diagonal holds the pairs; exact ties do not count against."""
    import torch

    ranks = (sim > sim.diag().unsqueeze(1)).sum(1)  # how many candidates score above the true pair
    return {k: (ranks < k).float().mean().item() for k in ks}


def load_eval_data(info: dict, fashion_samples: int, fashion_dir=None) -> dict:
    from ..datasets import FASHION_MNIST_ROOT, fashion_mnist, read_shard_samples

    images, captions, cats = [], [], []
    for _, im, cap, meta in read_shard_samples(info["heldout_data"]):
        images.append(im)
        captions.append(cap)
        cats.append(meta.get("category"))
    counts: Dict[str, int] = {}
    for c in cats:
        if c and c.lower() not in IGNORED_CATEGORIES:
            counts[c] = counts.get(c, 0) + 1
    classes = sorted(c for c, n in counts.items() if n >= 3)
    data = {"images": images, "captions": captions, "categories": cats, "classes": classes}
    if fashion_samples:
        from PIL import Image

        fm_images, fm_labels, fm_classes = fashion_mnist("test", fashion_dir or FASHION_MNIST_ROOT)
        data["fashion"] = ([Image.fromarray(a).convert("RGB") for a in fm_images[:fashion_samples]],
                           fm_labels[:fashion_samples], fm_classes)
    return data


def evaluate_checkpoint(model_name: str, checkpoint: str, image_size: int, data: dict) -> dict:
    import open_clip
    import torch

    from ..datasets import _clean

    model, _, preprocess = open_clip.create_model_and_transforms(
        model_name, pretrained=checkpoint, force_image_size=image_size)
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    img = _encode_images(model, preprocess, data["images"])
    txt = _encode_texts(model, tokenizer, data["captions"])
    sim = img @ txt.T
    out = {"heldout_images": len(data["images"])}
    for k, v in recall_at_k(sim).items():
        out[f"i2t_R@{k}"] = v
    for k, v in recall_at_k(sim.T).items():
        out[f"t2i_R@{k}"] = v
    if data["classes"]:
        keep = [i for i, c in enumerate(data["categories"]) if c in data["classes"]]
        labels = torch.tensor([data["classes"].index(data["categories"][i]) for i in keep])
        w = _classifier(model, tokenizer, [_clean(c) for c in data["classes"]], CLIPART_TEMPLATES)
        pred = (img[keep] @ w.T).argmax(1)
        out["clipart_zeroshot"] = (pred == labels).float().mean().item()
        out["clipart_classes"] = len(data["classes"])
        out["clipart_images"] = len(keep)
    if "fashion" in data:
        f_images, f_labels, f_classes = data["fashion"]
        f_img = _encode_images(model, preprocess, f_images)
        w = _classifier(model, tokenizer, list(f_classes), FASHION_TEMPLATES)
        pred = (f_img @ w.T).argmax(1)
        out["fashion_mnist_zeroshot"] = (pred == torch.as_tensor(f_labels)).float().mean().item()
        out["fashion_mnist_images"] = len(f_images)
    return out


# ---------------------------------------------------------------- report


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


# ---------------------------------------------------------------- command


def _command_line(args: argparse.Namespace) -> str:
    """The demo command with the options that differ from their defaults."""
    parts = ["open-clip-lightclip", "demo"]
    for action in args._parser._actions:
        if not action.option_strings or action.dest in ("help",):
            continue
        value = getattr(args, action.dest, None)
        if value == action.default or value is None:
            continue
        flag = action.option_strings[-1]
        if action.nargs == 0:
            parts.append(flag)
        elif isinstance(value, list):
            parts += [flag, *map(str, value)]
        elif isinstance(value, str) and value.startswith("-"):
            parts.append(f"{flag}={shlex.quote(value)}")
        else:
            parts += [flag, shlex.quote(str(value))]
    return " ".join(parts)


def _cmd_demo(args: argparse.Namespace) -> int:
    start = time.time()
    args.command_line = _command_line(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fashion_dir = Path(args.fashion_mnist_dir) if args.fashion_mnist_samples > 0 else None
    if args.data is None or fashion_dir is not None:
        if not ensure_debian_data(args.data is None, fashion_dir, allow_apt=not args.no_apt):
            if args.data is None:
                return 2
            log("Fashion-MNIST not available: skipping that check")
            args.fashion_mnist_samples = 0
    if args.data is not None:
        info_path = Path(args.data) / "build_info.json"
        if not info_path.is_file():
            print(f"error: {info_path} not found; make the shards with `open-clip-lightclip build-shards`",
                  file=sys.stderr)
            return 2
        info = json.loads(info_path.read_text())
        args.image_size = args.image_size or info["image_size"]
    else:
        args.image_size = args.image_size or 96
        info = prepare_shards(args, out / "data")
        if info is None:
            return 1
    if not info.get("train_data") or not info.get("heldout_data"):
        print("error: the shards need both a train and a held-out split", file=sys.stderr)
        return 1

    from ..losses import list_losses

    registered = set(list_losses())
    arms = [a for a in dict.fromkeys(args.arms) if a in registered]
    skipped = [a for a in dict.fromkeys(args.arms) if a not in registered]
    for a in skipped:
        log(f"note: --loss {a} is not registered in this install ({', '.join(sorted(registered))}); skipping that arm")
    if not arms:
        print("error: none of the arms can be trained", file=sys.stderr)
        return 1

    runs: List[dict] = []
    logs = out / "logs"
    total = len(arms) * len(args.seeds)
    for seed in args.seeds:
        for arm in arms:
            log(f"run {len(runs) + 1}/{total}: --loss {arm} --seed {seed}")
            record = run_arm(args, info, arm, seed, logs)
            if record is None:
                return 1
            runs.append(record)

    log("evaluating: held-out retrieval, clip-art zero-shot"
        + (f", Fashion-MNIST zero-shot ({args.fashion_mnist_samples} test images)" if args.fashion_mnist_samples else ""))
    data = load_eval_data(info, args.fashion_mnist_samples, args.fashion_mnist_dir)
    for r in runs:
        t = time.time()
        r["eval"] = evaluate_checkpoint(args.model, r["checkpoint"], args.image_size, data)
        r["curves"] = read_curves(Path(r["run_dir"]), args.steps_per_epoch, args.batch_size)
        e = r["eval"]
        log(f"{r['arm']}-seed{r['seed']}: i→t R@1/5/10 {e['i2t_R@1']:.3f}/{e['i2t_R@5']:.3f}/{e['i2t_R@10']:.3f}  "
            f"t→i {e['t2i_R@1']:.3f}/{e['t2i_R@5']:.3f}/{e['t2i_R@10']:.3f}  "
            f"clip-art zero-shot {e.get('clipart_zeroshot', float('nan')):.3f}  "
            f"Fashion-MNIST {e.get('fashion_mnist_zeroshot', float('nan')):.3f}  ({time.time() - t:.0f} s)")

    wall = time.time() - start
    table = summarize(args, info, runs, skipped, data, wall)
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps(
        {"args": {k: v for k, v in vars(args).items() if k not in ("func", "_parser")}, "runs": runs, "skipped_arms": skipped,
         "wall_seconds": wall}, indent=1, default=str))
    plot(out / "results.png", runs, args)
    print()
    print(table)
    log(f"wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'results.png'} in {wall / 60:.1f} min")
    return 0


DESCRIPTION = """\
Train the CPU-sized LightCLIP config with each objective ("arm") through the real
`python -m open_clip_train.main`, at the same budget and seed, on real captioned clip
art (Debian openclipart-png + openclipart-svg), then evaluate each on the held-out
split (image->text and text->image recall@1/5/10, zero-shot over the clip-art
categories) and zero-shot on Fashion-MNIST's test split (dataset-fashion-mnist).
Writes OUT/results.md (markdown table), OUT/results.json and OUT/results.png.
The default is sized for under 30 minutes on 2 idle CPU cores (about 15-20 min estimated
from measured step costs; far longer when other jobs share the cores)."""

EPILOG = """\
budget knobs: --epochs x --steps-per-epoch optimizer steps of --batch-size samples
per arm and seed, at --image-size px; --arms and --seeds set the number of runs.
The same command scales up on a GPU, e.g.:
  open-clip-lightclip demo --out demo_gpu --batch-size 256 --steps-per-epoch 400 --epochs 10 \\
      --seeds 0 1 2 --trainer-args='--device cuda --precision amp --workers 4'
Finished runs with identical settings are reused; delete OUT to start over.
Debian packages (installed automatically when run as root):
  apt-get install -y openclipart-png openclipart-svg dataset-fashion-mnist"""


def register(sub) -> None:
    p = sub.add_parser("demo", help="train and compare objectives on real captioned images (CPU, < 30 min)",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out", help="output folder: shards, runs, results (demo_out)")
    p.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), metavar="LOSS",
                   help="objectives to compare, one --loss each (default: clip lightclip cliplite); "
                        "arms whose loss is not registered are skipped with a note")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="SEED",
                   help="repeat every arm with these seeds; the table shows mean ± sd (default: 0)")
    p.add_argument("--model", default="LightCLIP-Tiny", help="model config (LightCLIP-Tiny)")
    p.add_argument("--image-size", type=int, default=None,
                   help="image size in px: shards are resized once to it, training uses --force-image-size "
                        "(default 96, or the size of --data)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (64)")
    p.add_argument("--steps-per-epoch", type=int, default=80, help="optimizer steps per epoch (80)")
    p.add_argument("--epochs", type=int, default=5,
                   help="epochs; held-out recall is measured after each (5)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (1e-3)")
    p.add_argument("--warmup", type=int, default=40, help="warmup steps (40)")
    p.add_argument("--data", default=None,
                   help="use shards made by `open-clip-lightclip build-shards` instead of the clip art")
    p.add_argument("--max-images", type=int, default=0, help="use only the first N clip-art images (0 = all)")
    p.add_argument("--heldout-fraction", type=float, default=0.1, help="share of images held out (0.1)")
    p.add_argument("--fashion-mnist-samples", type=int, default=10000,
                   help="Fashion-MNIST test images for the zero-shot check (10000 = all; 0 = skip)")
    p.add_argument("--fashion-mnist-dir", default="/usr/share/datasets/fashion-mnist",
                   help="folder of Fashion-MNIST's IDX files (the Debian package's)")
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of the trainer (0: torch's default)")
    p.add_argument("--build-workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="processes resizing images while building the shards")
    p.add_argument("--log-every", type=int, default=5, help="trainer log interval in steps (training curves)")
    p.add_argument("--trainer-args", default="",
                   help="extra flags for open_clip_train.main, appended last (e.g. '--device cuda --precision amp')")
    p.add_argument("--no-apt", action="store_true", help="never run apt-get; just say what to install")
    p.set_defaults(func=_cmd_demo, _parser=p)
