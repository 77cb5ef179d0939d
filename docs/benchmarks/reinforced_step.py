"""Step time of training from reinforced shards (stored teacher embeddings) against an online teacher on the same
replayed views, side by side: the real trainer, the two routes alternated for ROUNDS rounds of STEPS steps each,
the median of the trainer's own ``Batch (t)`` per route (the first 5 steps of each run left out), and the ratio.

    python docs/benchmarks/reinforced_step.py 'study/dr/dr/train-{00000..00003}.tar' \\
        LightCLIP-Tiny+mobilenetv3_small_100=study/dr/teacher/teacher/checkpoints/epoch_10.pt \\
        --out study/dr/bench --rounds 2 --steps 40 -- --force-image-size 128 --aug-cfg 'scale=(0.5,1.0)'

Trainer flags after ``--`` go to both routes. Both routes read the same shards and draw the same views; the
online route also loads the teacher.
"""
import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

from open_clip_lightclip.upstream.trainer_cmd import trainer_command

BATCH_TIME = re.compile(r"Batch \(t\): ([\d.]+)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shards")
    p.add_argument("teacher", help="MODEL=WEIGHTS, the teacher the shards were reinforced with")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="LightCLIP-Tiny")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=40)
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    routes = {"stored": ["--distill-reinforced", "--distill-synthetic-weight", "0"],
              "online": ["--distill-reinforced", "--distill-synthetic-weight", "0", "--distill-teacher", args.teacher]}
    times = {name: [] for name in routes}
    for r in range(args.rounds):
        for name, flags in routes.items():
            run = f"{name}-{r}"
            if (Path(args.out) / run).exists():
                sys.exit(f"error: {Path(args.out) / run} exists; choose another --out (nothing was overwritten)")
            cmd = trainer_command(args.shards, args.out, run, model=args.model, loss="clip", batch_size=args.batch_size,
                                  epochs=1, warmup=1, extra=["--train-num-samples", str(args.steps * args.batch_size),
                                                             "--log-every-n-steps", "1", "--save-frequency", "0",
                                                             *flags, *extra])
            subprocess.run(cmd, check=True, capture_output=True)
            steps = [float(t) for t in BATCH_TIME.findall((Path(args.out) / run / "out.log").read_text())]
            times[name].extend(steps[5:])
            print(f"{run}: median {statistics.median(steps[5:]):.3f} s/step over {len(steps) - 5} steps", flush=True)
    stored, online = (statistics.median(times[k]) for k in ("stored", "online"))
    print(f"median s/step: stored {stored:.3f}, online {online:.3f}: stored is {online / stored:.2f}x faster")


if __name__ == "__main__":
    main()
