"""Training runs through the real ``python -m open_clip_train.main``: start, follow, reuse, read back.

A run writes to ``LOGS/NAME`` exactly as the trainer does; a finished run with the same
command line is reused; an interrupted one is moved aside (never deleted).
"""
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

from ..upstream.trainer_cmd import trainer_command

__all__ = ["cpu_seconds", "log", "run_arm", "read_curves", "TRAIN_LINE"]

TRAIN_LINE = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+) \(\s*\d+%\)\].*?Batch \(t\): ([\d.]+).*? Loss: ([\d.eE+-]+)")


def cpu_seconds(children: bool = True) -> float:
    """CPU seconds (user + system) of this process, or of its finished children."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


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
        m = TRAIN_LINE.search(line)
        if m:
            epoch, done = int(m.group(1)), int(m.group(2))
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
            m = TRAIN_LINE.search(line)
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
