"""``open-clip-lightclip demo``: ``ablate``'s preset that compares the three objectives on the Debian clip art.

Arms ``clip`` (baseline), ``lightclip`` and ``cliplite`` (``--loss NAME`` each, defaults), one
seed, the CPU-sized ``LightCLIP-Tiny`` at 96 px: everything else is ``open-clip-lightclip ablate``.
"""
import argparse
import sys

from .ablate import add_study_args, parse_arms, run_with_arms

DEFAULT_ARMS = ("clip", "lightclip", "cliplite")

DESCRIPTION = """\
Train the CPU-sized LightCLIP config with each objective ("arm") through the real
`python -m open_clip_train.main`, at the same budget and seed, on real captioned clip
art (Debian openclipart-png + openclipart-svg), then evaluate each on the held-out
split (image->text and text->image recall@1/5/10, zero-shot over the clip-art
categories) and zero-shot on Fashion-MNIST's test split (dataset-fashion-mnist), with
clip_benchmark's metrics, and compare each with `clip` paired by seed.
Writes OUT/results.md (markdown tables), OUT/results.json and OUT/results.png.
A preset of `open-clip-lightclip ablate`. The default is sized for under 30 minutes on 2
idle CPU cores (about 15-20 min estimated from measured step costs; far longer when other
jobs share the cores)."""

EPILOG = """\
budget knobs: --epochs x --steps-per-epoch optimizer steps of --batch-size samples
per arm and seed, at --image-size px; --arms and --seeds set the number of runs.
The same command scales up on a GPU, e.g.:
  open-clip-lightclip demo --out demo_gpu --batch-size 256 --steps-per-epoch 400 --epochs 10 \\
      --seeds 0 1 2 --trainer-args='--device cuda --precision amp --workers 4'
Finished runs with identical settings are reused; delete OUT to start over.
Debian packages (installed automatically when run as root):
  apt-get install -y openclipart-png openclipart-svg dataset-fashion-mnist"""


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..losses import list_losses
    from ..studies.arms import StudyError

    registered = list_losses()
    names = list(dict.fromkeys(args.arms))
    for name in names:
        if name not in registered:
            print(f"note: --loss {name} is not registered in this install ({', '.join(registered)}); skipping that arm")
    try:
        arms = parse_arms([n for n in names if n in registered], registered)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    baseline = "clip" if any(a.name == "clip" for a in arms) else (arms[0].name if arms else None)
    return run_with_arms(args, "demo", arms, baseline, default_image_size=96)


def register(sub) -> None:
    p = sub.add_parser("demo", help="train and compare objectives on real captioned images (CPU, < 30 min)",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), metavar="LOSS",
                   help="objectives to compare, one --loss each, the first-named `clip` the baseline (default: "
                        "clip lightclip cliplite); arms whose loss is not registered are skipped with a note")
    add_study_args(p, out="demo_out", seeds=(0,),
                   image_size_help="image size in px: shards are resized once to it, training uses "
                                   "--force-image-size (default 96, or the size of --data)")
    p.set_defaults(func=_cmd_demo, _parser=p)
