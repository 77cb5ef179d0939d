import os
import subprocess
import sys
from pathlib import Path

import pytest

from open_clip_lightclip.upstream.trainer_cmd import trainer_command
from open_clip_lightclip.data.synthetic import write_synthetic_shards

REPO = Path(__file__).resolve().parents[1]
# `make test` runs the suite in one pytest-xdist worker per core: each worker, and every Python it starts, then
# computes on one thread (two threads per worker on two cores would oversubscribe them); a plain `pytest` keeps two.
THREADS = "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2"
if THREADS == "1":
    import torch

    torch.set_num_threads(1)


def subprocess_env(**extra):
    """Environment of a child Python: CPU only, quiet, no user site, plugin not disabled."""
    env = {k: v for k, v in os.environ.items() if k != "OPEN_CLIP_LIGHTCLIP_DISABLE"}
    env.update(CUDA_VISIBLE_DEVICES="", PYTHONNOUSERSITE="1", OMP_NUM_THREADS=THREADS, TORCH_LOGS="-all")
    env.update(extra)
    return env


def run_python(args, check=True, cwd=None, **env):
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd or REPO, env=subprocess_env(**env))
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory):
    """Two shards of 16 captioned 64 px images: brace pattern for --train-data."""
    root = tmp_path_factory.mktemp("shards")
    write_synthetic_shards(root, num_samples=32, image_size=64, samples_per_shard=16, seed=0)
    return str(root / "train-{00000..00001}.tar")


@pytest.fixture
def train(tiny_shards, tmp_path):
    """Run the real trainer as a subprocess; returns (process, checkpoint folder)."""

    def _train(model="LightCLIP-Tiny", loss="clip", extra=(), batch_size=8, epochs=1, name="run", check=True,
               runner=None, env=None):
        cmd = trainer_command(tiny_shards, str(tmp_path / "logs"), name, model=model, loss=loss,
                              batch_size=batch_size, epochs=epochs, warmup=1, extra=["--workers", "0", *extra])
        if runner is not None:
            cmd[1:3] = [str(runner)]
        proc = run_python(cmd[1:], check=check, **(env or {}))
        return proc, tmp_path / "logs" / name / "checkpoints"

    return _train


@pytest.fixture(autouse=True)
def _no_pending_trainer_args():
    """A test that parses trainer flags in-process must not configure the next test's model."""
    yield
    from open_clip_lightclip.upstream import hooks

    hooks._PENDING_TRAINER_ARGS = None
