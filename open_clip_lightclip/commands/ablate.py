"""``open-clip-lightclip ablate``: compare trainer settings ("arms") over paired seeds on one data set and budget."""
import argparse
import os
import shlex
import sys

DESCRIPTION = """\
Train every arm with every seed through the real `python -m open_clip_train.main` at the
same model, data and budget, evaluate each final checkpoint on the held-out split with
clip_benchmark's metrics (image->text and text->image recall@1/5/10, zero-shot top-1 over
the held-out categories and Fashion-MNIST), and compare each arm with the baseline paired
by seed: mean ± sd per arm, the paired difference with a 95% t interval and the seeds won.
The verdict is on the primary metric, declared before the runs (--primary; default the
held-out average: the mean of every recall and zero-shot top-1), with the retrieval mean
and the zero-shot mean beside it.
Writes OUT/results.md, OUT/results.json and OUT/results.png (forest plot) after every run.
Resumable: run the same command again and finished runs are reused; an interrupted run's
folder is moved aside, never deleted."""

EPILOG = """\
arms: NAME=TRAINER FLAGS, e.g.
  open-clip-lightclip ablate --baseline clip --seeds 0 1 2 --arms clip='--loss clip' \\
      lightclip='--loss lightclip' 'soft=--loss lightclip --lightclip-token-weight 0 --lightclip-mlm-weight 0'
A bare registered loss name is short for NAME=--loss NAME. Or a file (--arms-file):
  {"baseline": "clip", "arms": {"clip": "--loss clip", "lightclip": "--loss lightclip"}}   (JSON, or YAML)
Data: the Debian clip art (built once into OUT/data, installed by apt-get when root), or
--data DIR from `open-clip-lightclip build-shards`. Budget: --epochs x --steps-per-epoch
optimizer steps of --batch-size per run, at --image-size px."""


def _command_line(args: argparse.Namespace, prog: str) -> str:
    """The command with the options that differ from their defaults."""
    parts = ["open-clip-lightclip", prog]
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
            parts += [flag, *map(shlex.quote, map(str, value))]
        elif isinstance(value, str) and value.startswith("-"):
            parts.append(f"{flag}={shlex.quote(value)}")
        else:
            parts += [flag, shlex.quote(str(value))]
    return " ".join(parts)


def add_study_args(p: argparse.ArgumentParser, out: str, seeds, image_size_help: str) -> None:
    """The options every study command shares (budget, data, model)."""
    from ..benchmarks._args import at_least, finite_float, fraction, out_folder, shards_folder, shell_words

    p.add_argument("--out", type=out_folder, default=out, help=f"output folder: shards, runs, results ({out})")
    p.add_argument("--report-dir", default=None,
                   help="where results.md/.json/.png go (default: --out); several arms files can share one --out, "
                        "and so its runs (a baseline trained once), each reporting to its own folder")
    p.add_argument("--seeds", nargs="+", type=int, default=list(seeds), metavar="SEED",
                   help=f"seeds; each gives every arm the same initial towers and data order (default: "
                        f"{' '.join(map(str, seeds))})")
    p.add_argument("--model", default="LightCLIP-Tiny", help="model config (LightCLIP-Tiny)")
    p.add_argument("--image-size", type=int, default=None, help=image_size_help)
    p.add_argument("--batch-size", type=at_least(1), default=64, help="batch size (64)")
    p.add_argument("--steps-per-epoch", type=at_least(1), default=80, help="optimizer steps per epoch (80)")
    p.add_argument("--epochs", type=at_least(1), default=5, help="epochs; held-out recall is measured after each (5)")
    p.add_argument("--lr", type=finite_float, default=1e-3, help="learning rate (1e-3)")
    p.add_argument("--warmup", type=int, default=40, help="warmup steps (40)")
    p.add_argument("--data", type=shards_folder, default=None,
                   help="use shards made by `open-clip-lightclip build-shards` instead of the clip art")
    p.add_argument("--max-images", type=int, default=0, help="use only the first N clip-art images (0 = all)")
    p.add_argument("--heldout-fraction", type=fraction, default=0.1, help="share of images held out (0.1)")
    p.add_argument("--fashion-mnist-samples", type=int, default=10000,
                   help="Fashion-MNIST test images for the zero-shot check (10000 = all; 0 = skip)")
    p.add_argument("--fashion-mnist-dir", default="/usr/share/datasets/fashion-mnist",
                   help="folder of Fashion-MNIST's IDX files (the Debian package's)")
    p.add_argument("--threads", type=int, default=0,
                   help="OMP_NUM_THREADS of each trainer (0: torch's default, or cores / --parallel)")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="runs trained at once (1). Small models keep few cores busy: on 2 CPU cores two "
                        "1-thread runs at once trained 1.6x the samples per second of one 2-thread run")
    p.add_argument("--build-workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="processes resizing images while building the shards")
    p.add_argument("--log-every", type=int, default=5, help="trainer log interval in steps (training curves)")
    p.add_argument("--trainer-args", type=shell_words, default="",
                   help="extra flags for open_clip_train.main for every arm, before the arm's own "
                        "(e.g. '--device cuda --precision amp')")
    p.add_argument("--no-apt", action="store_true", help="never run apt-get; just say what to install")
    p.add_argument("--primary", default="heldout_average", metavar="KEY",
                   help="the primary metric, declared before the runs: the seeds won and the verdicts are on it "
                        "(heldout_average: the mean of every retrieval recall and zero-shot top-1 a run has; or "
                        "retrieval_mean, zeroshot_mean, or one metric: i2t_R@1 ... t2i_R@10, clipart_zeroshot, "
                        "fashion_mnist_zeroshot)")


def study_config(args: argparse.Namespace, tag: str, default_image_size: int):
    from ..studies.study import StudyConfig

    return StudyConfig(
        out=args.out, report_dir=args.report_dir, model=args.model, image_size=args.image_size, batch_size=args.batch_size,
        steps_per_epoch=args.steps_per_epoch, epochs=args.epochs, lr=args.lr, warmup=args.warmup, seeds=args.seeds,
        data=args.data, max_images=args.max_images, heldout_fraction=args.heldout_fraction,
        fashion_mnist_samples=args.fashion_mnist_samples, fashion_mnist_dir=args.fashion_mnist_dir,
        threads=args.threads, parallel=args.parallel, build_workers=args.build_workers, log_every=args.log_every,
        trainer_args=args.trainer_args, no_apt=args.no_apt, tag=tag, command_line=_command_line(args, tag),
        default_image_size=default_image_size, primary=args.primary)


def parse_arms(items, registered):
    """``NAME=FLAGS`` items; a bare registered loss name ``X`` is ``X=--loss X``."""
    from ..studies.arms import StudyError, make_arm, parse_arm

    arms = []
    for item in items:
        if "=" not in item and item in registered:
            arms.append(make_arm(item, ["--loss", item]))
        elif "=" not in item:
            raise StudyError(f"arm {item!r}: not a registered --loss ({', '.join(registered)}); write it as "
                             "NAME=TRAINER FLAGS")
        else:
            arms.append(parse_arm(item))
    return arms


def run_with_arms(args: argparse.Namespace, tag: str, arms, baseline, default_image_size: int,
                  report_only: bool = False) -> int:
    from ..studies.arms import StudyError
    from ..studies.study import run_study

    try:
        return run_study(study_config(args, tag, default_image_size), arms, baseline, report_only=report_only)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _rereport(args: argparse.Namespace) -> int:
    """``--from-results``: report a results.json's recorded runs again (under ``--primary``), training nothing."""
    from ..studies.arms import StudyError
    from ..studies.study import rereport

    try:
        if args.arms or args.arms_file:
            raise StudyError("--from-results reports the arms of its results.json: leave out --arms and --arms-file "
                             "(--baseline pairs them with another of its arms)")
        text = rereport(args.from_results, args.primary, args.report_dir, _command_line(args, "ablate"),
                        baseline=args.baseline)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text)
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    from ..losses import list_losses
    from ..studies.arms import StudyError, read_arms_file

    if args.from_results:
        return _rereport(args)
    try:
        arms, baseline = [], args.baseline
        if args.arms_file:
            arms, file_baseline = read_arms_file(args.arms_file)
            baseline = baseline or file_baseline
        arms += parse_arms(args.arms or [], list_losses())
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run_with_arms(args, "ablate", arms, baseline, default_image_size=128, report_only=args.report_only)


def register(sub) -> None:
    p = sub.add_parser("ablate", help="compare trainer settings over paired seeds (mean ± sd, paired 95%% CI)",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", nargs="+", default=None, metavar="NAME=FLAGS",
                   help="arms: NAME=TRAINER FLAGS, or a registered --loss name")
    p.add_argument("--arms-file", default=None, help="arms (and baseline) from a JSON or YAML file")
    p.add_argument("--baseline", default=None, help="the arm every other is compared with")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: report the runs already recorded with each arm's settings (e.g. the same "
                        "study against another baseline, or a subset of its arms); missing runs are listed")
    p.add_argument("--from-results", default=None, metavar="RESULTS_JSON",
                   help="train nothing and need no data or run folders: report the runs recorded in a study's "
                        "results.json again (e.g. under another --primary, or paired against another of its arms with "
                        "--baseline), to --report-dir (default: its folder); implies --report-only")
    add_study_args(p, out="ablate_out", seeds=(0, 1, 2),
                   image_size_help="image size in px: shards are resized once to it, training uses "
                                   "--force-image-size (default 128: a 4x4 last feature map, or the size of --data)")
    p.set_defaults(func=_cmd_ablate, _parser=p)
