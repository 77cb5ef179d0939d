"""`open-clip-lightclip ablate` (and `demo`, its preset): arms, pairing by seed, statistics, resume, bad input."""
import json
import re

import pytest
import torch

from conftest import run_python
from open_clip_lightclip.cli import main
from open_clip_lightclip.data.synthetic import synthetic_samples
from open_clip_lightclip.studies import evaluate, report
from open_clip_lightclip.studies.arms import StudyError, check_arms, parse_arm, read_arms_file
from open_clip_lightclip.studies.stats import paired_difference, t_quantile_975
from test_build_shards import write_fake_fashion_mnist


# --- arms ---------------------------------------------------------------------------------------------
def test_arms_from_the_command_line_and_from_files(tmp_path):
    arm = parse_arm("soft=--loss lightclip --lightclip-token-weight 0 --lightclip-soft-label-spread similarity")
    assert arm.name == "soft" and arm.flags == ("--loss", "lightclip", "--lightclip-token-weight", "0",
                                                "--lightclip-soft-label-spread", "similarity")
    (tmp_path / "arms.json").write_text(json.dumps(
        {"baseline": "clip", "arms": {"clip": "--loss clip", "mlm": ["--loss", "lightclip", "--lightclip-mlm-weight", "0.5"]}}))
    arms, baseline = read_arms_file(tmp_path / "arms.json")
    assert baseline == "clip" and [(a.name, a.flags) for a in arms] == [
        ("clip", ("--loss", "clip")), ("mlm", ("--loss", "lightclip", "--lightclip-mlm-weight", "0.5"))]
    yaml = pytest.importorskip("yaml")
    (tmp_path / "arms.yaml").write_text(yaml.safe_dump({"baseline": "a", "arms": ["a=--loss clip", "b=--loss siglip"]}))
    arms, baseline = read_arms_file(tmp_path / "arms.yaml")
    assert baseline == "a" and [a.flags for a in arms] == [("--loss", "clip"), ("--loss", "siglip")]


COMMON = ["--train-data", "x.tar", "--model", "LightCLIP-Tiny"]


@pytest.mark.parametrize("arms, baseline, seeds, message", [
    (["a=--loss clip", "a=--loss siglip"], "a", [0], "duplicate arm name(s) a: every arm needs its own name"),
    (["a=--loss clip", "b=--loss siglip"], None, [0], "no baseline: name one of the arms with --baseline (a, b)"),
    (["a=--loss clip", "b=--loss siglip"], "c", [0], "baseline 'c' is not an arm (a, b)"),
    (["a=--loss clip"], "a", [], "no seeds: give --seeds 0 1 2"),
    (["a=--loss clip"], "a", [0, 0], "repeats a seed"),
    (["a=--loss clip", "b=--loss lightclip --lightclip-no-such 3"], "a", [0],
     "arm 'b' (--loss lightclip --lightclip-no-such 3): unrecognized arguments: --lightclip-no-such 3"),
    (["a=--loss clip", "b=--loss lightclip --lightclip-sinkhorn-iters 0"], "a", [0],
     "arm 'b' (--loss lightclip --lightclip-sinkhorn-iters 0): --lightclip-sinkhorn-iters must be >= 1, got 0"),
])
def test_bad_studies_stop_in_one_line_before_training(arms, baseline, seeds, message):
    with pytest.raises(StudyError) as e:
        check_arms([parse_arm(a) for a in arms], baseline, seeds, COMMON)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_arm_flags_the_study_owns_are_refused():
    with pytest.raises(StudyError, match="--seed is set by the study for every arm"):
        parse_arm("a=--loss clip --seed 3")
    with pytest.raises(StudyError, match="write it as NAME=TRAINER FLAGS"):
        parse_arm("--loss clip")


def test_cli_bad_arm_stops_before_any_data_or_run(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["ablate", "--out", str(out), "--data", str(tmp_path / "missing"), "--baseline", "clip",
                 "--arms", "clip", "x=--loss lightclip --lightclip-token-weight -1"])
    assert code == 2 and not out.exists()
    assert capsys.readouterr().err.strip() == (
        "error: arm 'x' (--loss lightclip --lightclip-token-weight -1): --lightclip-token-weight must be >= 0 "
        "(0 turns the term off)")
    assert main(["ablate", "--out", str(out), "--arms", "clip", "nosuchloss"]) == 2
    assert "arm 'nosuchloss': not a registered --loss" in capsys.readouterr().err


# --- statistics ---------------------------------------------------------------------------------------
def test_paired_ci_by_hand():
    d = paired_difference({0: 1.0, 1: 3.0, 2: 5.0, 7: 9.0}, {0: 0.0, 1: 1.0, 2: 2.0})  # seed 7 unpaired: ignored
    # differences 1, 2, 3: mean 2, sd 1, t_{0.975, 2} = 4.303, half width 4.303 / sqrt(3) = 2.4843
    assert (d.n, d.mean, d.sd, d.wins) == (3, 2.0, 1.0, 3)
    assert d.low == pytest.approx(2 - 2.48434, abs=1e-4) and d.high == pytest.approx(2 + 2.48434, abs=1e-4)
    assert d.verdict == "no difference beyond the CI"
    assert paired_difference({0: 2.0, 1: 2.5}, {0: 1.0, 1: 1.4}).verdict == "better"  # diffs 1.0, 1.1
    assert paired_difference({0: 1.0}, {0: 2.0}).low is None
    assert t_quantile_975(1) == 12.706 and t_quantile_975(30) == 2.042 and 1.96 < t_quantile_975(200) < 1.98


# --- evaluation with clip_benchmark's metrics -------------------------------------------------------------
class _FixedModel(torch.nn.Module):
    """encode_image / encode_text return fixed vectors: image i is [i-th basis vector]; a text names its vector."""

    def __init__(self, vectors):
        super().__init__()
        self.vectors = vectors

    def encode_image(self, x):
        return torch.stack([self.vectors[int(v)] for v in x[:, 0, 0, 0]])

    def encode_text(self, tokens):
        return torch.stack([self.vectors[int(t)] for t in tokens[:, 0]])


def test_retrieval_metrics_are_clip_benchmarks_on_a_hand_checkable_case():
    # 3 pairs: image 0 and 1 retrieve their own text; image 2's nearest text is text 0
    vectors = {0: torch.tensor([1.0, 0.0, 0.0]), 1: torch.tensor([0.0, 1.0, 0.0]), 2: torch.tensor([0.9, 0.0, 0.1]),
               10: torch.tensor([0.0, 0.0, 1.0])}
    images = [0, 1, 2]
    preprocess = lambda i: torch.full((3, 1, 1), float(i))  # noqa: E731
    tokenizer = lambda texts: torch.tensor([[int(t)] for t in texts])  # noqa: E731
    m = evaluate.retrieval_metrics(_FixedModel(vectors), preprocess, tokenizer, images, ["0", "1", "10"], ks=(1, 2))
    # i->t: image 2 ranks text "10" (score 0.1) below text "0" (0.9): R@1 = 2/3, R@2 = 1
    # t->i: text "10" ranks image 2 (0.1) first of its scores (0, 0, 0.1): R@1 = 1
    assert m == {"i2t_R@1": pytest.approx(2 / 3), "i2t_R@2": 1.0, "t2i_R@1": 1.0, "t2i_R@2": 1.0}


# --- end to end: the real trainer ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mini_shards(tmp_path_factory):
    """A generated folder of 96 captioned shapes (categories = shape), built into shards at 32 px."""
    root = tmp_path_factory.mktemp("ablate")
    src = root / "src"
    for key, image, caption in synthetic_samples(96, 48, seed=1):
        folder = src / caption.split()[2]
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{key}.png")
        (folder / f"{key}.txt").write_text(f"{caption} number {key[-3:]}")
    assert main(["build-shards", "folder", str(src), "--out", str(root / "shards"), "--image-size", "32",
                 "--heldout-fraction", "0.25", "--no-progress", "--workers", "1"]) == 0
    return root / "shards"


BUDGET = ["--steps-per-epoch", "2", "--epochs", "1", "--batch-size", "8", "--warmup", "1", "--log-every", "1",
          "--threads", "1", "--no-apt"]


def _losses(run_dir):
    """The training loss of every logged step, as the trainer prints it (4 decimals)."""
    return re.findall(r"Train Epoch: .* Loss: ([\d.]+)", (run_dir / "out.log").read_text())


@pytest.mark.slow
@pytest.mark.extended
def test_ablate_pairs_seeds_reports_and_resumes(mini_shards, tmp_path):
    out = tmp_path / "study"
    arms = ["clip", "inst=--loss lightclip --lightclip-token-weight 0 --lightclip-mlm-weight 0 "
                    "--lightclip-soft-label-max 0", "all=--loss lightclip --lightclip-mlm-weight 0.5"]
    cmd = ["-m", "open_clip_lightclip.cli", "ablate", "--data", str(mini_shards), "--out", str(out), "--baseline",
           "clip", "--seeds", "0", "1", "--fashion-mnist-samples", "0", *BUDGET, "--arms", *arms]
    proc = run_python([*cmd, "--parallel", "2"])
    assert re.search(r"run 6/6 all-seed1 \(6/6 to train\): elapsed [\d.]+ min, study eta \d+ min", proc.stdout)
    # two at a time: the second run starts before the first one's result is logged
    assert proc.stdout.index("run 2/6 inst-seed0 (2/6 to train)") < proc.stdout.index("clip-seed0: i→t")
    logs = out / "logs"
    # paired: one seed gives every arm the same initial towers and the same batches, so the instance term alone
    # with e_max 0 (= CLIP's loss) reproduces the clip arm step by step; another seed does not
    assert _losses(logs / "inst-seed0") == _losses(logs / "clip-seed0") and len(_losses(logs / "clip-seed0")) == 2
    assert _losses(logs / "clip-seed1") != _losses(logs / "clip-seed0")
    first_instance = re.search(r"Instance_loss: ([\d.]+)", (logs / "all-seed0" / "out.log").read_text()).group(1)
    assert first_instance == _losses(logs / "clip-seed0")[0]  # heads added, same start

    results = json.loads((out / "results.json").read_text())
    assert sorted((r["arm"], r["seed"]) for r in results["runs"]) == sorted(
        (a, s) for a in ("clip", "inst", "all") for s in (0, 1))
    assert all(f"{r['arm']}-seed{r['seed']}" in r["cmd"] and r["train_cpu_seconds"] > 0 for r in results["runs"])
    assert [r["threads"] for r in results["runs"]] == [1] * 6  # --threads 1: recorded, as it changes the rounding
    paired = results["summary"]["paired"]
    d = paired["all"]["heldout_average"]
    assert d["n"] == 2 and d["low"] <= d["mean"] <= d["high"] and d["verdict"]
    table = (out / "results.md").read_text()
    assert "| arm | held-out average (primary) | retrieval mean | zero-shot mean | i→t R@1 |" in table
    assert "| *chance* |" in table and results["primary"] == "heldout_average"
    assert "Threads per run: 1 (6 runs)." in table
    assert re.search(r"\| all \| [+-]\d+\.\d \[[+-]\d+\.\d, [+-]\d+\.\d\] \|", table)
    assert (out / "results.png").stat().st_size > 10_000

    # resume: finished runs are reused; an interrupted run's folder is moved aside, then trained again; an arm
    # whose flags spell an earlier arm's training otherwise (a default written out) reuses that arm's runs
    (logs / "all-seed1" / "checkpoints" / "epoch_1.pt").unlink()  # as if stopped before its last save
    del results["runs"][[(r["arm"], r["seed"]) for r in results["runs"]].index(("all", 1))]
    (out / "results.json").write_text(json.dumps(results))
    same = "same=--loss lightclip --lightclip-mlm-weight 0 --lightclip-soft-label-max 0 --lightclip-token-weight 0 " \
           "--lightclip-instance-weight 1 --lightclip-matching hungarian"  # a flag of the token term, which is off
    again = run_python([*cmd, same])
    assert again.stdout.count("reusing the finished run") == 5 and again.stdout.count("$ ") == 1  # only all-seed1
    assert "arms inst, same train the same" in again.stdout
    assert "arm same: --lightclip-matching train(s) nothing here" in again.stdout and "arm all:" not in again.stdout
    assert again.stdout.count("(the same training)") == 2 and "same-seed1: reusing the evaluated run inst-seed1" in again.stdout
    assert len(list(logs.glob("all-seed1.previous-*"))) == 1 and (logs / "all-seed1" / "checkpoints" / "epoch_1.pt").is_file()
    rows = {(r["arm"], r["seed"]): r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert rows["same", 1]["eval"] == rows["inst", 1]["eval"] and rows["same", 1]["settings"] == rows["inst", 1]["settings"]

    # --report-only: the same runs against another baseline, plus an arm never trained, which is left out
    base = [x if x != "clip" else "inst" for x in cmd[:cmd.index("--arms")]]  # --baseline inst
    only = run_python([*base, "--report-only", "--report-dir", str(tmp_path / "r2"), "--arms", *arms[1:],
                       "new=--loss lightclip --lightclip-mlm-weight 0.25"])
    assert "$ " not in only.stdout and only.stdout.count("no recorded run with its settings") == 2
    report2 = json.loads((tmp_path / "r2" / "results.json").read_text())
    assert report2["baseline"] == "inst" and sorted({r["arm"] for r in report2["runs"]}) == ["all", "inst"]


@pytest.mark.slow
@pytest.mark.extended
def test_demo_is_the_ablate_preset(mini_shards, tmp_path):
    fashion = write_fake_fashion_mnist(tmp_path / "fashion", n=30)
    out = tmp_path / "demo_out"
    proc = run_python(["-m", "open_clip_lightclip.cli", "demo", "--data", str(mini_shards), "--out", str(out),
                       "--arms", "clip", "siglip", "no-such-loss", "--fashion-mnist-dir", str(fashion),
                       "--fashion-mnist-samples", "30", *BUDGET])
    assert "no-such-loss is not registered" in proc.stdout and "skipping that arm" in proc.stdout
    assert re.search(r"clip-seed0: step 2/2", proc.stdout)
    results = json.loads((out / "results.json").read_text())
    assert results["baseline"] == "clip" and results["arms"] == {"clip": ["--loss", "clip"], "siglip": ["--loss", "siglip"]}
    for r in results["runs"]:
        e = r["eval"]
        assert all(0 <= e[k] <= 1 for k in ("i2t_R@1", "t2i_R@10", "clipart_zeroshot", "fashion_mnist_zeroshot"))
        assert e["i2t_R@1"] <= e["i2t_R@5"] <= e["i2t_R@10"]
        assert e["clipart_classes"] == 4 and e["fashion_mnist_images"] == 30
        assert r["curves"]["step"] == [1, 2] and len(r["curves"]["val"]) == 1
        # clip_benchmark's recall on the held-out split is the trainer's own --val-data recall (unique captions)
        assert e["i2t_R@5"] == pytest.approx(r["curves"]["val"][-1]["image_to_text_R@5"], abs=1e-6)
    a, b = (r["cmd"] for r in results["runs"])
    assert [x for x, y in zip(a, b) if x != y] == ["clip-seed0", "clip"]  # same budget and seed: name and loss differ
    table = (out / "results.md").read_text()
    assert "Fashion-MNIST zero-shot" in table and "| siglip |" in table


def test_demo_help_documents_the_budget_knobs(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for knob in ("--steps-per-epoch", "--epochs", "--image-size", "--batch-size", "--arms", "--seeds",
                 "--trainer-args", "clip lightclip cliplite", "apt-get install -y openclipart-png",
                 "preset of `open-clip-lightclip ablate`"):
        assert knob in text


def test_demo_refuses_unknown_data_folder(tmp_path, capsys):
    assert main(["demo", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--fashion-mnist-samples", "0"]) == 2
    assert "build-shards" in capsys.readouterr().err


def test_runs_are_reused_by_the_settings_the_trainer_resolves_not_by_how_the_flags_are_spelled(tmp_path):
    from open_clip_lightclip.studies.arms import idle_flags, make_arm
    from open_clip_lightclip.studies.runs import same_settings
    from open_clip_lightclip.studies.study import find_recorded, recorded_runs, same_trainings
    from open_clip_lightclip.upstream.trainer_cmd import trainer_command, trainer_settings

    def settings(name, *flags):
        return trainer_settings(trainer_command("x.tar", "/logs", name, loss="lightclip", extra=list(flags))[3:])

    default = settings("a")
    assert settings("b", "--lightclip-token-weight", str(default["lightclip_token_weight"])) == default  # name aside
    assert settings("a", "--lightclip-token-weight", "0.25") != default and "name" not in default
    assert not any(k.startswith("cliplite_") for k in default)  # another objective's flags train nothing here
    # the flags of a term that is off train nothing (the token and MLM terms are on by default: turn them off)
    assert default["lightclip_token_weight"] == 1 and default["lightclip_mlm_weight"] == 0.5
    off = settings("a", "--lightclip-token-weight", "0", "--lightclip-mlm-weight", "0")
    assert settings("a", "--lightclip-token-weight", "0", "--lightclip-mlm-weight", "0", "--lightclip-matching",
                    "hungarian", "--lightclip-mlm-attention", "causal") == off
    assert settings("a", "--lightclip-matching", "hungarian") != default
    assert default["lightclip_matching"] == "sinkhorn" and "lightclip_matching" not in off
    flat = settings("a", "--lightclip-soft-label-max", "0")  # e_max 0: the spread and schedule shape nothing
    assert settings("a", "--lightclip-soft-label-max", "0", "--lightclip-soft-label-spread", "similarity") == flat
    assert settings("a", "--lightclip-soft-label-spread", "similarity") != default
    # distillation's flags without a teacher, and a term's own flags while its weight is 0, train nothing
    assert settings("a", "--distill-affinity-weight", "0.5", "--distill-feature-distance", "cosine") == default
    (tmp_path / "teacher.pt").touch()  # the parser checks that the weights exist; nothing here loads them
    teacher = ["--distill-teacher", f"LightCLIP-Tiny={tmp_path / 'teacher.pt'}"]
    distill = settings("a", *teacher)
    assert distill != default and distill["distill_affinity_weight"] == 1 and "distill_feature_distance" not in distill
    assert settings("a", *teacher, "--distill-feature-distance", "cosine") == distill
    assert settings("a", *teacher, "--distill-teacher-logit-scale", "50") != distill
    feature = [*teacher, "--distill-affinity-weight", "0", "--distill-feature-weight", "1"]
    assert settings("a", *feature, "--distill-teacher-logit-scale", "50") == settings("a", *feature)
    assert settings("a", *feature, "--distill-feature-distance", "cosine") != settings("a", *feature)
    arm = make_arm("x", "--loss lightclip --distill-affinity-weight 0.5 --lightclip-matching max --lightclip-token-weight 0")
    assert idle_flags(arm, settings("x", *arm.flags[2:])) == ["--distill-affinity-weight", "--lightclip-matching"]
    # a flag the record predates is not compared; one it knows with another value (a changed default) is
    older = {k: v for k, v in default.items() if k != "lightclip_soft_label_spread"}
    assert same_settings(older, default) and not same_settings({**older, "lightclip_mlm_weight": 0.123}, default)
    assert same_trainings({"a": default, "b": dict(default), "c": {**default, "seed": 1}}) == [["a", "b"]]
    # records: the one of the same name first; a record without settings (older ablate) is never reused
    runs = [{"arm": "x", "seed": 0, "eval": {"i2t_R@1": 0.1}, "settings": default},
            {"arm": "a", "seed": 0, "eval": {"i2t_R@1": 0.2}, "settings": default},
            {"arm": "b", "seed": 0, "eval": {"i2t_R@1": 0.3}, "cmd": ["python", "-m", "open_clip_train.main"]}]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"runs": runs}))
    recorded = recorded_runs(path)
    assert len(recorded) == 2 and find_recorded(recorded, default, "a-seed0")["eval"]["i2t_R@1"] == 0.2
    assert find_recorded(recorded, default, "z-seed0")["arm"] == "x"
    assert find_recorded(recorded, {**default, "seed": 1}, "a-seed1") is None


def test_results_say_how_many_runs_trained_with_each_thread_count():
    from open_clip_lightclip.studies.study import _threads_line

    runs = [{"eval": {}, "threads": 2}, {"eval": {}, "threads": 1}, {"eval": {}}, {"eval": {}, "threads": 1},
            {"threads": 4}]  # the last was not evaluated: not counted
    assert _threads_line(runs)[0].startswith("Threads per run: 1 (2 runs), 2 (1 run), not recorded (1 run). ")
    assert _threads_line(runs[-1:]) == []


def test_report_table_by_hand():
    runs = [{"arm": a, "seed": s, "train_seconds": 10.0,
             "eval": {k: v for k in report.RECALL_KEYS}} for a, vals in (("clip", (0.1, 0.2, 0.3)),
                                                                      ("x", (0.2, 0.4, 0.3))) for s, v in enumerate(vals)]
    summary = report.summarize_runs(runs, ["clip", "x"], "clip")
    assert summary["arms"]["clip"]["retrieval_mean"]["mean"] == pytest.approx(20.0)
    assert summary["arms"]["clip"]["retrieval_mean"]["sd"] == pytest.approx(10.0)
    assert summary["arms"]["clip"]["heldout_average"] == summary["arms"]["clip"]["retrieval_mean"]  # no zero-shot
    d = summary["paired"]["x"]["heldout_average"]  # differences 10, 20, 0 points
    assert d["mean"] == pytest.approx(10.0) and d["wins"] == 2 and d["n"] == 3
    text = report.markdown(summary, ["clip", "x"], {}, ["# t"])
    assert "| clip (baseline) | 20.0 ± 10.0 |" in text and "| x | +10.0 [-14.8, +34.8] |" in text


def test_an_arm_may_train_on_cached_or_reinforced_shards_of_the_studys_own_data(tmp_path):
    import json as _json

    from open_clip_lightclip.studies.arms import StudyError, check_cached_shards, make_arm

    with pytest.raises(StudyError, match="--train-data is set by the study for every arm"):
        make_arm("x", "--loss clip --train-data other.tar")
    arm = make_arm("cached", f"--loss clip --distill-cache --train-data {tmp_path}/c/train-{{0..1}}.tar")
    with pytest.raises(StudyError, match="no .*teacher_cache.json; make the shards with"):
        check_cached_shards(arm, f"{tmp_path}/train-{{0..1}}.tar")
    (tmp_path / "c").mkdir()
    sources = [str(tmp_path / f"train-{i}.tar") for i in (0, 1)]
    (tmp_path / "c" / "teacher_cache.json").write_text(_json.dumps({"sources": sources}))
    check_cached_shards(arm, f"{tmp_path}/train-{{0..1}}.tar")  # the study's own shards: paired
    with pytest.raises(StudyError, match="derives from other shards than the study's"):
        check_cached_shards(arm, f"{tmp_path}/train-{{0..2}}.tar")
    # reinforced shards likewise (their reinforce.json names the shards they were made from)
    arm = make_arm("dr", f"--loss clip --distill-reinforced --train-data {tmp_path}/r/train-{{0..1}}.tar")
    with pytest.raises(StudyError, match="no .*reinforce.json; make the shards with `open-clip-lightclip reinforce`"):
        check_cached_shards(arm, f"{tmp_path}/train-{{0..1}}.tar")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "reinforce.json").write_text(_json.dumps({"sources": sources}))
    check_cached_shards(arm, f"{tmp_path}/train-{{0..1}}.tar")
    with pytest.raises(StudyError, match="derives from other shards than the study's"):
        check_cached_shards(arm, f"{tmp_path}/train-{{0..2}}.tar")


def test_a_failed_run_stops_the_runs_not_started_and_keeps_the_finished(mini_shards, tmp_path, monkeypatch, capsys):
    """--parallel 2 with a run that fails: the run beside it finishes and is reported, the queued one never
    starts, and the study exits 1 (training and evaluation stubbed: the orchestration is under test)."""
    import threading
    import time as _time

    from open_clip_lightclip.commands.ablate import parse_arms
    from open_clip_lightclip.studies import study

    started, both, failed = [], threading.Barrier(2, timeout=10), threading.Event()

    def fake_train(cmd, settings, run_dir, ckpt, *args, **kwargs):
        name = run_dir.name
        started.append(name)
        run_dir.mkdir(parents=True)
        both.wait()  # the two slots are busy
        if name.startswith("bad"):
            failed.set()
            return None
        failed.wait(10)
        _time.sleep(0.2)
        return {"cmd": cmd, "settings": settings, "train_seconds": 1.0, "run_dir": str(run_dir), "checkpoint": str(ckpt)}

    metrics = {f"{d}_R@{k}": 0.5 for d in ("i2t", "t2i") for k in (1, 5, 10)}
    monkeypatch.setattr(study, "train", fake_train)
    monkeypatch.setattr(study, "evaluate_checkpoint", lambda *a: dict(metrics))
    cfg = study.StudyConfig(out=str(tmp_path / "s"), data=str(mini_shards), seeds=[0], parallel=2,
                            fashion_mnist_samples=0, steps_per_epoch=2, epochs=1, batch_size=8, no_apt=True)
    arms = parse_arms(["clip", "bad=--loss lightclip", "later=--loss siglip"], ["clip", "lightclip", "siglip"])
    assert study.run_study(cfg, arms, "clip") == 1
    assert sorted(started) == ["bad-seed0", "clip-seed0"]  # `later` never started
    runs = json.loads((tmp_path / "s" / "results.json").read_text())["runs"]
    assert [(r["arm"], r["eval"]["i2t_R@1"]) for r in runs] == [("clip", 0.5)]
    with pytest.raises(StudyError, match="--parallel 0: give the number of runs to train at once"):
        study.run_study(study.StudyConfig(out=str(tmp_path / "t"), parallel=0), arms, "clip")
