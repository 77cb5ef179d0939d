"""``clip_benchmark eval`` on trainer checkpoints and datasets written by ``build-benchmark``."""
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn as nn

from open_clip_lightclip.cli import main as cli_main
from open_clip_lightclip.data.benchmark_sets import DEFAULT_TEMPLATES
from open_clip_lightclip.models import TRAINING_ONLY_MODULES
from open_clip_lightclip.data.synthetic import synthetic_samples

from conftest import subprocess_env

MODEL = "LightCLIP-Tiny"


def _shape_folder(root: Path, n: int = 24):
    """IMAGES/SHAPE/KEY.png plus captions.tsv and labels.tsv (paths relative to root)."""
    captions, labels = [], []
    for key, image, caption in synthetic_samples(n, image_size=48, seed=3):
        shape = caption.split()[2]
        (root / shape).mkdir(parents=True, exist_ok=True)
        image.save(root / shape / f"{key}.png")
        captions.append(f"{shape}/{key}.png\t{caption}")
        labels.append(f"{shape}/{key}.png\t{shape}")
    (root / "captions.tsv").write_text("\n".join(captions) + "\n")
    (root / "labels.tsv").write_text("\n".join(labels) + "\n")
    return root


@pytest.fixture
def datasets(tmp_path):
    images = _shape_folder(tmp_path / "images")
    assert cli_main(["build-benchmark", str(tmp_path / "shapes"), "--images", str(images)]) == 0
    assert cli_main(["build-benchmark", str(tmp_path / "shapes_captions"), "--images", str(images),
                     "--captions", str(images / "captions.tsv")]) == 0
    return tmp_path


def test_written_layout_is_what_clip_benchmark_reads(datasets, tmp_path, capsys):
    from clip_benchmark.datasets.builder import build_dataset

    cls = build_dataset("wds/shapes", root=str(datasets / "shapes"), transform=None,
                        task="zeroshot_classification")
    assert cls.classes == ["circle", "cross", "square", "triangle"]
    assert cls.templates == list(DEFAULT_TEMPLATES)
    samples = list(cls)
    assert len(samples) == 24 and all(0 <= label < 4 for _, label in samples)
    assert samples[0][0].size == (48, 48)

    ret = build_dataset("wds/shapes_captions", root=str(datasets / "shapes_captions"), transform=None,
                        task="zeroshot_retrieval")
    samples = list(ret)
    assert len(samples) == 24 and samples[0][1][0].startswith("a ") and samples[0][1][0].count(" background")

    # from --labels with an explicit class order and custom templates
    (tmp_path / "classes.txt").write_text("triangle\nsquare\ncross\ncircle\n")
    (tmp_path / "templates.txt").write_text("a {c} shape.\n")
    out = tmp_path / "from_labels"
    assert cli_main(["build-benchmark", str(out), "--images", str(datasets / "images"), "--labels",
                     str(datasets / "images" / "labels.tsv"), "--classnames", str(tmp_path / "classes.txt"),
                     "--templates", str(tmp_path / "templates.txt"), "--samples-per-shard", "10"]) == 0
    assert (out / "test" / "nshards.txt").read_text().strip() == "3"
    ds = build_dataset("wds/from_labels", root=str(out), transform=None, task="zeroshot_classification")
    assert ds.classes == ["triangle", "square", "cross", "circle"] and ds.templates == ["a {c} shape."]
    assert len(list(ds)) == 24


def test_build_benchmark_errors_are_one_line(tmp_path, capsys):
    images = _shape_folder(tmp_path / "images", n=4)
    (images / "bad.tsv").write_text("circle/nope.png\ta caption\n")
    for argv, expected in [
        (["--captions", str(images / "bad.tsv")], "bad.tsv:1: image"),
        (["--labels", str(tmp_path / "missing.tsv")], "missing.tsv: no such file"),
    ]:
        assert cli_main(["build-benchmark", str(tmp_path / "out"), "--images", str(images), *argv]) == 1
        err = capsys.readouterr().err.strip()
        assert expected in err and "\n" not in err, err
    assert cli_main(["build-benchmark", str(tmp_path / "out2"), "--images", str(images)]) == 0
    assert cli_main(["build-benchmark", str(tmp_path / "out2"), "--images", str(images)]) == 1
    assert "--force" in capsys.readouterr().err


def test_zeroshot_accuracy_survives_numpy_scalar_conversion_rule():
    """NumPy 2.4 rejects float() of a 1-element array (2.3 warns): the plugin's shim avoids it."""
    from clip_benchmark.metrics import zeroshot_classification as zc

    assert hasattr(zc.accuracy, "__wrapped__"), "open_clip_lightclip.upstream.hooks did not patch accuracy"
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.3, 0.4, 0.35]])
    target = torch.tensor([1, 0, 0, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NumPy 2.3's DeprecationWarning = NumPy 2.4's TypeError
        if tuple(int(p) for p in np.__version__.split(".")[:2]) < (2, 4):
            with pytest.raises((DeprecationWarning, TypeError)):
                zc.accuracy.__wrapped__(logits, target, topk=(1, 2))
        assert zc.accuracy(logits, target, topk=(1, 2)) == [0.5, 0.75]


def _trainer_like_checkpoint(path):
    torch.manual_seed(0)
    model = open_clip.create_model(MODEL)
    model.lightclip_train = nn.Linear(4, 4)  # a training-only module, as --loss lightclip attaches
    assert "lightclip_train" in TRAINING_ONLY_MODULES
    torch.save({"epoch": 1, "name": "run", "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
               path)


@pytest.mark.slow
def test_clip_benchmark_eval_as_typed_both_tasks(datasets):
    """`clip_benchmark eval --model M --pretrained epoch_1.pt --dataset wds/NAME --dataset_root DIR --task T`."""
    _trainer_like_checkpoint(datasets / "epoch_1.pt")
    clip_benchmark = str(Path(sys.executable).with_name("clip_benchmark"))
    runs = {
        "zeroshot_classification": ("shapes", {"acc1", "acc5", "mean_per_class_recall"}),
        "zeroshot_retrieval": ("shapes_captions", {"image_retrieval_recall@5", "text_retrieval_recall@5"}),
    }
    procs = {}
    for task, (name, _) in runs.items():  # both at once: most of each run is import time
        cmd = [clip_benchmark, "eval", "--model", MODEL, "--pretrained", "epoch_1.pt", "--dataset", f"wds/{name}",
               "--dataset_root", name, "--task", task]
        procs[task] = subprocess.Popen(cmd, cwd=datasets, env=subprocess_env(), stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
    for task, (name, keys) in runs.items():
        out, _ = procs[task].communicate(timeout=600)
        assert procs[task].returncode == 0, out[-4000:]
        result = json.loads((datasets / f"{name}_epoch_1.pt_{MODEL}_en_{task}.json").read_text())
        assert result["task"] == task and result["model"] == MODEL and result["dataset"] == f"wds/{name}"
        assert set(result["metrics"]) == keys, result
        assert all(isinstance(v, float) for v in result["metrics"].values())


def test_the_command_line_turns_clip_benchmarks_progress_bars_off(tmp_path):
    """``ablate`` / ``bench`` logs carried one bar per class and batch of every evaluation: tqdm reads
    TQDM_DISABLE when first imported, so setting it inside the evaluator was too late. The command line sets it
    before anything imports tqdm; a command's own bar passes ``disable`` and stays."""
    code = ("from open_clip_lightclip.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "from tqdm import tqdm\n"  # the class clip_benchmark's metrics call with no arguments but the iterable
            "print(tqdm(range(2)).disable, tqdm(range(2), disable=False).disable)")
    env = subprocess_env()
    env.pop("TQDM_DISABLE", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "True False", proc.stdout[-500:]
