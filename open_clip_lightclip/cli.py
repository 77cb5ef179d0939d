"""``open-clip-lightclip``: the command line (``demo``, ``list-models``, ...)."""
import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

__all__ = ["main", "trainer_command"]


def trainer_command(
        train_data: str,
        logs: str,
        name: str,
        model: str = "LightCLIP-Tiny",
        loss: Optional[str] = "clip",
        batch_size: int = 32,
        epochs: int = 1,
        lr: float = 1e-3,
        warmup: int = 10,
        seed: int = 0,
        extra: Optional[List[str]] = None,
) -> List[str]:
    """The ``python -m open_clip_train.main`` command line of a single-process CPU run."""
    cmd = [
        sys.executable, "-m", "open_clip_train.main",
        "--model", model,
        "--train-data", train_data,
        "--dataset-type", "webdataset",
        "--device", "cpu",
        "--precision", "fp32",
        "--batch-size", str(batch_size),
        "--epochs", str(epochs),
        "--lr", str(lr),
        "--warmup", str(warmup),
        "--workers", "1",
        "--seed", str(seed),
        "--logs", logs,
        "--name", name,
        "--log-every-n-steps", "1",
    ]
    if loss is not None:
        cmd += ["--loss", loss]
    return cmd + list(extra or [])


def _cmd_list_models(args: argparse.Namespace) -> int:
    import open_clip

    for name in open_clip.list_models():
        if not args.plugin_only or open_clip.get_model_config(name).get("model_class"):
            print(name)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .shards import write_synthetic_shards

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="open-clip-lightclip",
        description="Lightweight CLIP training with OpenCLIP (LightCLIP / CLIP-Lite objectives).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list-models", help="list the model configs OpenCLIP knows")
    p.add_argument("--plugin-only", action="store_true", help="only this package's configs")
    p.set_defaults(func=_cmd_list_models)

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
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
