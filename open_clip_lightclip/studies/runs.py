"""Training runs through the real ``python -m open_clip_train.main``: start, follow, reuse, move aside.

A run writes to ``LOGS/NAME`` exactly as the trainer does, plus ``study_run.json`` (its command
line, the trainer settings it resolves to, its thread count, times and, once evaluated, its metrics). A finished run
with the same settings is reused; a folder holding anything else (an interrupted run, other settings) is moved aside to
``NAME.previous-<time>``, never deleted.
"""
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional

__all__ = ["cpu_seconds", "log", "RECORD", "TRAIN_LINE", "same_settings", "finished_run", "move_aside", "train", "read_curves"]

RECORD = "study_run.json"
TRAIN_LINE = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+) \(\s*\d+%\)\].*?Batch \(t\): ([\d.]+).*? Loss: ([\d.eE+-]+)")


def cpu_seconds(children: bool = True) -> float:
    """CPU seconds (user + system) of this process, or of its finished children."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


_LOG_LOCK = threading.Lock()


def log(msg: str, tag: str = "study") -> None:
    """One line on stdout (whole, when several runs report at once)."""
    with _LOG_LOCK:
        sys.stdout.write(f"[{tag} {time.strftime('%H:%M:%S')}] {msg}\n")
        sys.stdout.flush()


def same_settings(recorded: dict, settings: dict) -> bool:
    """True when a recorded run's trainer settings are ``settings``. Only flags both know are compared: a flag
    added after the run was recorded is taken to default to the behaviour it had (the rule this package keeps
    when it adds one); a changed default, or any flag set otherwise, is a different run."""
    return all(recorded[k] == settings[k] for k in recorded.keys() & settings.keys())


def finished_run(run_dir: Path, settings: dict, checkpoint: Path) -> Optional[dict]:
    """The record of a finished run that trained with exactly these trainer ``settings``, else None."""
    record_path = run_dir / RECORD
    if not (checkpoint.is_file() and record_path.is_file()):
        return None
    record = json.loads(record_path.read_text())
    return record if record.get("settings") and same_settings(record["settings"], settings) else None


def move_aside(run_dir: Path) -> Path:
    """Rename ``run_dir`` to ``NAME.previous-<time>`` (the trainer refuses an existing folder)."""
    aside = run_dir.with_name(f"{run_dir.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.rename(aside)
    return aside


def _wait(proc: subprocess.Popen):
    """Exit code and CPU seconds of this child alone (other runs of a ``--parallel`` study run beside it)."""
    if hasattr(os, "wait4"):
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        return proc.returncode, usage.ru_utime + usage.ru_stime
    before = cpu_seconds()
    return proc.wait(), cpu_seconds() - before  # no wait4: the children's total (serial studies only)


def train(cmd: List[str], settings: dict, run_dir: Path, checkpoint: Path, total_steps: int, steps_per_epoch: int,
          batch_size: int, threads: int = 0, report: Callable[[str], None] = log,
          on_start: Optional[Callable[[subprocess.Popen], None]] = None) -> Optional[dict]:
    """Run the trainer command, report progress about every 10%; the run's record (with the trainer ``settings``
    the command resolves to and its thread count), or None if it failed. The same command and thread count train
    the same weights bit for bit; another thread count rounds sums in another order (a different draw of the run)."""
    import torch

    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    threads = threads or torch.get_num_threads()  # the child's default: the same environment, no set_num_threads
    name = run_dir.name
    start = time.time()
    tail: List[str] = []
    next_report = 0.0
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
    if on_start is not None:
        on_start(proc)
    for line in proc.stdout:
        tail = (tail + [line.rstrip()])[-40:]
        m = TRAIN_LINE.search(line)
        if m:
            step = int(m.group(1)) * steps_per_epoch + round(int(m.group(2)) / batch_size)
            frac = step / total_steps
            if frac >= next_report or step == total_steps:
                elapsed = time.time() - start
                eta = elapsed / max(frac, 1e-9) * (1 - frac)
                report(f"{name}: step {step}/{total_steps}  loss {float(m.group(5)):.4f}  "
                       f"{float(m.group(4)):.2f} s/step  elapsed {elapsed:.0f} s  eta {eta:.0f} s")
                next_report = frac + 0.1
    rc, cpu = _wait(proc)
    seconds = time.time() - start
    if rc != 0 or not checkpoint.is_file():
        print(f"error: training {name} failed (exit {rc}); last lines:\n" + "\n".join(tail[-15:]), file=sys.stderr)
        return None
    record = {"cmd": cmd, "command": shlex.join(cmd), "settings": settings, "threads": threads, "train_seconds": seconds,
              "train_cpu_seconds": cpu, "checkpoint": str(checkpoint), "run_dir": str(run_dir)}
    (run_dir / RECORD).write_text(json.dumps(record, indent=1))
    return record


def read_curves(run_dir: Path, steps_per_epoch: int, batch_size: int) -> dict:
    """Training loss per logged step (``out.log``) and the trainer's per-epoch ``--val-data`` recall."""
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
