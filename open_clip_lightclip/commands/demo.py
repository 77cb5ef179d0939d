"""``open-clip-lightclip demo``: train a small CLIP on the CPU through the real trainer."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

from ..trainer_cmd import trainer_command


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..shards import write_synthetic_shards

    out = Path(args.out)
    data = out / "data"
    if not (data / "sizes.json").exists():
        print(f"[demo] writing {args.samples} synthetic captioned images to {data}", flush=True)
        write_synthetic_shards(data, args.samples, args.image_size, samples_per_shard=256, seed=args.seed)
    shards = sorted(p.name for p in data.glob("train-*.tar"))
    train_data = str(data / f"train-{{00000..{len(shards) - 1:05d}}}.tar")
    logs = out / "logs"
    for loss in args.loss:
        name = f"{args.model}-{loss}-seed{args.seed}"
        if (logs / name).exists():
            print(f"[demo] {logs / name} exists; skipping (delete it to train again)", flush=True)
            continue
        cmd = trainer_command(
            train_data, str(logs), name, model=args.model, loss=loss, batch_size=args.batch_size,
            epochs=args.epochs, seed=args.seed, extra=["--force-image-size", str(args.image_size)])
        print(f"[demo] training: {' '.join(cmd)}", flush=True)
        rc = subprocess.call(cmd, env={**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "")})
        if rc != 0:
            print(f"[demo] error: training with --loss {loss} failed (exit {rc}); see {logs / name / 'out.log'}",
                  file=sys.stderr)
            return rc
        print(f"[demo] checkpoint: {logs / name / 'checkpoints' / f'epoch_{args.epochs}.pt'}", flush=True)
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="train a small CLIP on the CPU through open_clip_train")
    p.add_argument("--out", default="demo_out", help="output folder (data, logs, checkpoints)")
    p.add_argument("--model", default="LightCLIP-Tiny", help="model config")
    p.add_argument("--loss", nargs="+", default=["clip"], help="objectives to train, one run each")
    p.add_argument("--samples", type=int, default=1024, help="training samples")
    p.add_argument("--image-size", type=int, default=64, help="image size in pixels")
    p.add_argument("--batch-size", type=int, default=32, help="batch size")
    p.add_argument("--epochs", type=int, default=2, help="epochs")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(func=_cmd_demo)
