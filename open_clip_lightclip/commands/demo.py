"""``open-clip-lightclip demo``: train and compare objectives on real captioned images, on a CPU.

1. makes sure the Debian clip art and Fashion-MNIST are there (``apt-get`` when root);
2. builds webdataset shards (train / held out) with :func:`open_clip_lightclip.data.shards.build_shards`;
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
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

from ..studies.evaluate import evaluate_checkpoint, load_eval_data
from ..studies.report import plot, summarize
from ..studies.runs import log, read_curves, run_arm

DEFAULT_ARMS = ("clip", "lightclip", "cliplite")
APT_LINE = "apt-get install -y openclipart-png openclipart-svg dataset-fashion-mnist"


# ---------------------------------------------------------------- data


def ensure_debian_data(need_clipart: bool, fashion_dir: Optional[Path], allow_apt: bool) -> bool:
    from ..data.sources import OPENCLIPART_ROOT

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
    from ..data import shards, sources

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
    stats = sources.BuildStats()
    records = list(sources.openclipart_records(stats=stats))
    if args.max_images:
        records = records[:args.max_images]
    info = shards.build_shards(records, data, image_size=args.image_size, heldout_fraction=args.heldout_fraction,
                           split_seed=0, samples_per_shard=1000, stats=stats, source="openclipart",
                           workers=args.build_workers, progress=True)
    info["max_images"] = args.max_images
    info_path.write_text(json.dumps(info, indent=1))
    log(f"shards: {info['written']['train']} train / {info['written']['heldout']} held out; "
        f"skipped {info['skipped_broken']} broken image(s), {info['skipped_no_caption']} without caption")
    return info


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
