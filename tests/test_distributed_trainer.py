"""Two CPU processes through the real trainer: torchrun and the SLURM route, 2 x B == 1 x 2B, resume.

Upstream's trainer passed ``device_ids=[cpu]`` to DDP, so several ``--device cpu`` processes could not
train; the seam fixes the wrap. Settings with a term off (e.g. ``--lightclip-instance-weight 0``) used to
stop DDP at the second step (parameters without gradient); their unused parameters are now frozen.
"""
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import subprocess_env
from open_clip_lightclip.data.synthetic import write_synthetic_shards
from open_clip_lightclip.upstream.trainer_cmd import trainer_command

# the torchrun script (run by this Python), as users type it
TORCHRUN = [sys.executable, str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two shards of 8 samples: each of 2 ranks reads one; one process reads both."""
    root = tmp_path_factory.mktemp("dshards")
    write_synthetic_shards(root, num_samples=16, image_size=64, samples_per_shard=8, seed=5)
    return str(root / "train-{00000..00001}.tar")


def _cmd(shards, logs, name, batch, extra, epochs=1):
    return trainer_command(shards, str(logs), name, model="LightCLIP-Tiny", loss=None, batch_size=batch,
                           epochs=epochs, warmup=1, extra=["--workers", "1", "--force-image-size", "64", *extra])


def _run(cmd, env=None, check=True):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(OMP_NUM_THREADS="1", **(env or {})),
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("flags", [
    ["--loss", "lightclip", "--lightclip-instance-weight", "0", "--lightclip-mlm-weight", "0", "--lightclip-token-weight", "1"],
    pytest.param(["--loss", "lightclip", "--lightclip-instance-weight", "0", "--lightclip-token-weight", "0",
                  "--lightclip-mlm-weight", "0.5"], marks=pytest.mark.extended),
    pytest.param(["--loss", "cliplite", "--cliplite-prior-weight", "0.1"], marks=pytest.mark.extended),
], ids=["token-alone", "mlm-alone", "cliplite-prior"])
def test_torchrun_two_cpu_processes_train(shards, tmp_path, flags):
    cmd = _cmd(shards, tmp_path / "logs", "run", 4, flags)
    _run([*TORCHRUN, *cmd[1:]])  # 2 steps of 2 x 4: DDP's second step is where unused parameters used to fail
    log = (tmp_path / "logs" / "run" / "out.log").read_text()
    assert re.search(r"\[\s*8/16 \(50%\)\]", log) and "[16/16 (100%)]" in log and re.search(r"Loss: [\d.]+", log)
    assert (tmp_path / "logs" / "run" / "checkpoints" / "epoch_1.pt").is_file()


def _slurm_job(cmd, tasks=2):
    """Start ``cmd`` as ``srun`` would for a 2-task job on one node: SLURM_* per task, no torchrun."""
    port = _free_port()
    procs = []
    for rank in range(tasks):
        env = {"SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NTASKS": str(tasks),
               "SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_ID": "4242", "SLURM_NTASKS_PER_NODE": str(tasks),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env=subprocess_env(OMP_NUM_THREADS="1", **env)))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


@pytest.mark.slow
@pytest.mark.extended
def test_slurm_route_trains_and_resume_latest_continues_the_schedule(shards, tmp_path):
    """The trainer's SLURM branch (SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID, MASTER_ADDR / MASTER_PORT), as
    examples/slurm/train_lightclip.sbatch launches it: then `--resume latest` picks up at the step it stopped."""
    flags = ["--loss", "lightclip", "--lightclip-soft-label-max", "0.4", "--save-most-recent"]
    _slurm_job(_cmd(shards, tmp_path / "logs", "job", 4, flags, epochs=1))
    log = (tmp_path / "logs" / "job" / "out.log").read_text()
    assert "Running in distributed mode with multiple processes. Device: cpu.Process (global: 0, local 0), total 2." in log
    assert "lightclip soft labels: step 0/2" in log
    _slurm_job(_cmd(shards, tmp_path / "logs", "job", 4, [*flags, "--resume", "latest"], epochs=2))
    log = (tmp_path / "logs" / "job" / "out.log").read_text()
    assert "lightclip soft labels: step 2/4" in log  # resumed at step 2 of 4: e(t) = 0.5 e_max
    assert (tmp_path / "logs" / "job" / "checkpoints" / "epoch_2.pt").is_file()


@pytest.mark.slow
def test_first_step_of_two_processes_equals_one_process_on_the_global_batch(shards, tmp_path):
    """2 x B == 1 x 2B: the logged terms and the updated parameters after one optimizer step. The image trunk
    is locked with frozen BatchNorm statistics (BN would see B samples instead of 2B), augmentation is off, MLM
    (random masks per process) is off; the global batch is the same 16 samples in both runs."""
    flags = ["--loss", "lightclip", "--lightclip-mlm-weight", "0", "--lightclip-token-weight", "1",
             "--gather-with-grad", "--lock-image",
             "--lock-image-freeze-bn-stats", "--aug-cfg", "scale=(1.0,1.0)", "ratio=(1.0,1.0)",
             "--train-num-samples", "16", "--lr", "1e-3",
             "--eps", "1e-3"]  # Adam's epsilon above float noise: gradients that are exactly 0 in theory (e.g. key
    # biases: softmax ignores a shift) come out ~1e-10 and Adam's g / (|g| + eps) would turn that noise into steps
    _run(_cmd(shards, tmp_path / "logs", "one", 16, flags)[:])
    _run([*TORCHRUN, *_cmd(shards, tmp_path / "logs", "two", 8, flags)[1:]])

    def terms(name):
        line = [x for x in (tmp_path / "logs" / name / "out.log").read_text().splitlines() if "Train Epoch" in x][0]
        return {k: float(v) for k, v in re.findall(r"(\w+_loss): ([\d.]+)", line)}

    one, two = terms("one"), terms("two")
    assert set(one) == {"Instance_loss", "Token_loss"} and one == pytest.approx(two, abs=2e-4)
    a = torch.load(tmp_path / "logs" / "one" / "checkpoints" / "epoch_1.pt", map_location="cpu")["state_dict"]
    b = torch.load(tmp_path / "logs" / "two" / "checkpoints" / "epoch_1.pt", map_location="cpu")["state_dict"]
    b = {k.removeprefix("module."): v for k, v in b.items()}
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < 1e-6, worst  # one AdamW step of lr 1e-3 moves a weight by up to 1e-3
    moved = max((a[k].float() - v.float()).abs().max().item() for k, v in _initial_state().items() if k in a)
    assert moved > 1e-4  # the step did move the weights


def _initial_state():
    import open_clip

    torch.manual_seed(0)  # the trainer's --seed 0 before building the model
    return open_clip.create_model("LightCLIP-Tiny", force_image_size=64).state_dict()


def test_the_example_scripts_run_the_real_trainer_with_flags_it_accepts():
    """examples/slurm/train_lightclip.sbatch (the SLURM route tested above) and the torchrun example:
    their trainer flags parse, plugin checks included."""
    import shlex

    from open_clip_lightclip.upstream.trainer_cmd import trainer_parse_error

    root = Path(__file__).resolve().parents[1] / "examples"
    for script, launcher in ((root / "slurm" / "train_lightclip.sbatch", "srun"),
                             (root / "torchrun_multinode.sh", "torchrun")):
        text = script.read_text().replace("\\\n", " ")
        line = next(x for x in text.splitlines() if x.strip().startswith(launcher))
        argv = shlex.split(line.replace('"$SHARDS"', "shards.tar"))
        flags = argv[argv.index("open_clip_train.main") + 1:]
        flags = [f.replace("${SLURM_JOB_ID}", "1") for f in flags]
        assert "--loss" in flags and flags[flags.index("--model") + 1] == "LightCLIP-MNv3", script
        assert trainer_parse_error(flags) is None, (script, trainer_parse_error(flags))
