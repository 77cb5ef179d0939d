"""Training step cost of every ``--loss`` on the same towers, batch and image size.

Each arm is built exactly as the trainer builds it (``open_clip_train.params.parse_args``
with the arm's flags, then ``open_clip.create_model`` and ``open_clip.create_loss``), from
the same seed, and timed for full steps (forward, loss, backward, AdamW step), interleaved
(A B C A B C ...) after warm-up, in one process. Memory is the peak resident set growth
during a step on the CPU (Linux ``VmHWM``, reset before each step) or
``torch.cuda.max_memory_allocated`` on a GPU.

``--global-batch`` simulates data parallelism for the loss alone: the local batch's
features and tokens are joined by constant (gathered) ones up to the global batch, as
``--local-loss`` sees them on one rank, and the loss forward + backward is timed (with its
peak memory, on the same calls).
On the CPU, freed heap is returned to the OS (``malloc_trim``) before each measured call,
so the peak counts what the call itself allocates, not what an earlier call left cached.
"""
import argparse
import sys
from ._train_arms import ARMS

__all__ = ["run", "register"]


def run(args: argparse.Namespace) -> int:
    from ._train_steps import run as run_steps  # torch only when the benchmark runs, not for --help

    try:
        return run_steps(args)
    except ValueError as e:  # an arm that cannot train at these sizes (e.g. CLIP-Lite at batch size 1)
        print(f"error: bench train: {e}; change --batch-size / --arms / --trainer-args", file=sys.stderr)
        return 2


def register(sub) -> None:
    from ._args import at_least, device

    p = sub.add_parser("train", help="step time / memory of each --loss on the same towers, side by side",
                       description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--model", default="LightCLIP-MNv3", help="model config (default: LightCLIP-MNv3)")
    p.add_argument("--batch-size", type=at_least(1), default=64, help="local batch size (default: 64)")
    p.add_argument("--image-size", type=at_least(1), default=224, help="image size (default: 224)")
    p.add_argument("--arms", nargs="+", default=list(ARMS), metavar="ARM",
                   help=f"arms, the first is the ratio's base (default: all: {', '.join(ARMS)})")
    p.add_argument("--repeats", type=at_least(1), default=5, help="timed rounds (default: 5)")
    p.add_argument("--warmup", type=at_least(0), default=1, help="untimed rounds first (default: 1)")
    p.add_argument("--device", type=device, default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", type=at_least(0), default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall time, or this process's CPU time (with --threads 1: robust to other load "
                        "on a shared machine)")
    p.add_argument("--global-batch", type=at_least(1), nargs="+", default=None, metavar="N",
                   help="instead: time the instance / token terms alone at these simulated global batch sizes")
    p.add_argument("--trainer-args", nargs=argparse.REMAINDER,
                   help="further trainer flags for every arm, e.g. --trainer-args --lightclip-matching max")
    p.set_defaults(func=run)
