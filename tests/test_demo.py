"""`open-clip-lightclip demo`: help text, report helpers, and a miniature end-to-end run."""
import json
import re

import pytest
import torch

from conftest import run_python
from open_clip_lightclip.cli import main
from open_clip_lightclip.studies import evaluate, report
from open_clip_lightclip.data.synthetic import synthetic_samples
from test_build_shards import write_fake_fashion_mnist


def test_help_documents_the_budget_knobs(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for knob in ("--steps-per-epoch", "--epochs", "--image-size", "--batch-size", "--arms", "--seeds",
                 "--trainer-args", "clip lightclip cliplite", "apt-get install -y openclipart-png"):
        assert knob in text


def test_recall_at_k_matches_upstream_definition():
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.7, 0.0], [0.0, 0.5, 0.4]])
    r = evaluate.recall_at_k(sim, ks=(1, 2, 3))
    assert r == {1: pytest.approx(1 / 3), 2: pytest.approx(1.0), 3: pytest.approx(1.0)}


def test_table_shows_mean_and_spread_over_seeds():
    class Args:
        model, image_size, epochs, steps_per_epoch, batch_size, lr, warmup = "LightCLIP-Tiny", 32, 1, 2, 8, 1e-3, 1
        seeds = [0, 1, 2]
        command_line = "open-clip-lightclip demo --seeds 0 1 2"

    def run(arm, seed, r1):
        e = {k: r1 for k, _ in report.METRICS}
        return {"arm": arm, "seed": seed, "eval": e, "train_seconds": 10.0}

    runs = [run("clip", s, v) for s, v in zip(range(3), (0.10, 0.20, 0.30))]
    runs += [run("cliplite", s, v) for s, v in zip(range(3), (0.40, 0.50, 0.60))]
    runs += [run("lightclip", s, v) for s, v in zip(range(3), (0.15, 0.25, 0.35))]
    data = {"images": [None] * 50, "categories": ["a"] * 30 + ["b"] * 20, "classes": ["a", "b"]}
    info = {"written": {"train": 100, "heldout": 50}, "source": "test"}
    table = report.summarize(Args, info, runs, ["nope"], data, 60.0)
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in table.splitlines() if line.startswith("| ")}
    assert rows["clip"][0].strip() == "20.0 ± 10.0" and rows["cliplite"][0].strip() == "50.0 ± 10.0"
    assert rows["*chance*"][:3] == [" 2.0 ", " 10.0 ", " 20.0 "] and rows["*chance*"][6].strip() == "50.0"
    assert "`cliplite`: +30.0 points, better" in table
    assert "`lightclip`: +5.0 points, within the seed spread" in table
    assert "largest category scores 60.0%" in table and "Skipped arms" in table and "nope" in table


@pytest.fixture(scope="module")
def mini_shards(tmp_path_factory):
    """A generated folder of 96 captioned shapes (categories = shape), built into shards at 32 px."""
    root = tmp_path_factory.mktemp("demo")
    src = root / "src"
    for key, image, caption in synthetic_samples(96, 48, seed=1):
        folder = src / caption.split()[2]
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{key}.png")
        (folder / f"{key}.txt").write_text(f"{caption} number {key[-3:]}")  # unique: no ties in recall
    assert main(["build-shards", "folder", str(src), "--out", str(root / "shards"), "--image-size", "32",
                 "--heldout-fraction", "0.25", "--no-progress", "--workers", "1"]) == 0
    return root


def test_demo_refuses_unknown_data_folder(tmp_path, capsys):
    assert main(["demo", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--fashion-mnist-samples", "0"]) == 2
    assert "build-shards" in capsys.readouterr().err


@pytest.mark.slow
def test_miniature_demo_two_arms_writes_table_and_png(mini_shards, tmp_path):
    fashion = write_fake_fashion_mnist(tmp_path / "fashion", n=30)
    out = tmp_path / "demo_out"
    proc = run_python([
        "-m", "open_clip_lightclip.cli", "demo", "--data", str(mini_shards / "shards"), "--out", str(out),
        "--arms", "clip", "siglip", "no-such-loss", "--steps-per-epoch", "2", "--epochs", "1",
        "--batch-size", "8", "--warmup", "1", "--log-every", "1", "--threads", "1",
        "--fashion-mnist-dir", str(fashion), "--fashion-mnist-samples", "30", "--no-apt",
    ])
    log = proc.stdout
    assert "no-such-loss is not registered" in log and "skipping that arm" in log
    assert re.search(r"clip-seed0: step 2/2", log) and "held-out recall@5" in log

    table = (out / "results.md").read_text()
    assert "| arm | i→t R@1 | i→t R@5 | i→t R@10 | t→i R@1 | t→i R@5 | t→i R@10 |" in table
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert {"clip", "siglip", "*chance*"} <= set(rows)
    assert "Skipped arms" in table and "no-such-loss" in table
    assert (out / "results.png").stat().st_size > 10_000

    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    assert sorted((r["arm"], r["seed"]) for r in runs) == [("clip", 0), ("siglip", 0)]
    for r in runs:
        e = r["eval"]
        assert all(0 <= e[k] <= 1 for k in ("i2t_R@1", "t2i_R@10", "clipart_zeroshot", "fashion_mnist_zeroshot"))
        assert e["i2t_R@1"] <= e["i2t_R@5"] <= e["i2t_R@10"]
        assert e["clipart_classes"] == 4 and e["fashion_mnist_images"] == 30
        assert r["curves"]["step"] == [1, 2] and len(r["curves"]["val"]) == 1
        # our held-out recall is the trainer's own --val-data recall of the same checkpoint (no tied captions)
        assert e["i2t_R@5"] == pytest.approx(r["curves"]["val"][0]["image_to_text_R@5"], abs=1e-6)
    # same seed, same budget: the commands differ only in --loss and --name
    a, b = runs[0]["cmd"], runs[1]["cmd"]
    assert [x for x, y in zip(a, b) if x != y] == ["clip-seed0", "clip"]

    # a second call reuses the finished runs and only re-evaluates
    again = run_python([
        "-m", "open_clip_lightclip.cli", "demo", "--data", str(mini_shards / "shards"), "--out", str(out),
        "--arms", "clip", "--steps-per-epoch", "2", "--epochs", "1", "--batch-size", "8", "--warmup", "1",
        "--log-every", "1", "--threads", "1", "--fashion-mnist-samples", "0", "--no-apt"])
    assert "reusing the finished run" in again.stdout
