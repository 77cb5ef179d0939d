"""The example launch scripts, run by bash with stub launchers: the shard path they hand the trainer.

The trainer (webdataset's braceexpand) expands ``{00000..00331}``; bash must pass it through untouched.
``SHARDS=${SHARDS:-/data/cc3m/{00000..00331}.tar}`` did not: the brace's ``}`` closed the expansion and
the trainer got ``/data/cc3m/{00000..00331.tar}``. Each script runs here as bash runs it on a cluster,
with ``srun`` / ``torchrun`` / ``scontrol`` replaced by stubs that print their arguments.
"""
import os
import shutil
import stat
from pathlib import Path
import subprocess

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {
    "slurm": ROOT / "examples" / "slurm" / "train_lightclip.sbatch",
    "torchrun": ROOT / "examples" / "torchrun_multinode.sh",
}
DEFAULT = "/data/cc3m/{00000..00331}.tar"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _stub_bin(tmp_path: Path) -> Path:
    """srun / torchrun print one argument per line; scontrol names one host."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stubs = {
        "srun": 'printf "%s\\n" "$@"\n',
        "torchrun": 'printf "%s\\n" "$@"\n',
        "scontrol": 'echo node001\n',
    }
    for name, body in stubs.items():
        path = bin_dir / name
        path.write_text("#!/bin/bash\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return bin_dir


def _train_data(script: Path, tmp_path: Path, **env_extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "SHARDS"}
    env["PATH"] = f"{_stub_bin(tmp_path)}{os.pathsep}{env['PATH']}"
    env.update(SLURM_JOB_NODELIST="node[001-002]", SLURM_JOB_ID="1234", SLURM_CPUS_PER_TASK="8",
               NODE_RANK="0", MASTER_ADDR="127.0.0.1")
    env.update(env_extra)
    out = subprocess.run(["bash", str(script)], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    argv = out.stdout.splitlines()
    assert "--train-data" in argv, out.stdout
    return argv[argv.index("--train-data") + 1]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_default_shard_path_reaches_the_trainer_unexpanded(name, tmp_path):
    assert _train_data(SCRIPTS[name], tmp_path) == DEFAULT


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_shards_from_the_environment_win(name, tmp_path):
    mine = "/scratch/mine/{000..009}.tar"
    assert _train_data(SCRIPTS[name], tmp_path, SHARDS=mine) == mine
