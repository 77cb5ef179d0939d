"""`ablate`'s primary metric, declared before the runs: the held-out average by default, `--primary` to choose,
and re-reporting a study's recorded runs from its results.json under it."""
import json
from pathlib import Path

import pytest

from open_clip_lightclip.cli import main
from open_clip_lightclip.studies import report
from open_clip_lightclip.studies.study import rereport

REPO = Path(__file__).resolve().parents[1]
RECALLS = dict(zip(report.RECALL_KEYS, (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)))  # sum 2.1


def test_heldout_average_retrieval_mean_and_zeroshot_mean_by_hand():
    both = {**RECALLS, "clipart_zeroshot": 0.3, "fashion_mnist_zeroshot": 0.5, "heldout_images": 10}
    assert report.aggregate(both, "retrieval_mean") == pytest.approx(2.1 / 6)  # 0.35
    assert report.aggregate(both, "zeroshot_mean") == pytest.approx(0.4)
    assert report.aggregate(both, "heldout_average") == pytest.approx(2.9 / 8)  # 0.3625: (2.1 + 0.8) / 8
    # a run without Fashion-MNIST (--fashion-mnist-samples 0): the average is over the 7 metrics it has
    no_fashion = {k: v for k, v in both.items() if k != "fashion_mnist_zeroshot"}
    assert report.aggregate(no_fashion, "heldout_average") == pytest.approx(2.4 / 7)
    assert report.aggregate(no_fashion, "zeroshot_mean") == pytest.approx(0.3)
    assert report.aggregate(RECALLS, "zeroshot_mean") is None

    summary = report.summarize_runs([{"arm": "a", "seed": 0, "eval": no_fashion}], ["a"], "a")
    assert summary["primary"] == "heldout_average"
    assert {k: summary["arms"]["a"][k]["mean"] for k in report.AGGREGATES} == pytest.approx(
        {"heldout_average": 240 / 7, "retrieval_mean": 35.0, "zeroshot_mean": 30.0})
    text = report.markdown(summary, ["a"], {}, ["# t"])
    assert "| arm | held-out average (primary) | retrieval mean | zero-shot mean | i→t R@1 |" in text
    assert "| a (baseline) | 34.3 | 35.0 | 30.0 | 10.0 |" in text
    assert "held-out average = the mean of the 7 metrics these runs have" in text
    assert "Not measured in these runs, so in no average: Fashion-MNIST zero-shot" in text
    # chance: 10 images, 5 classes; the aggregates average the chance of each metric
    chance = report.chance_from_runs([{"eval": {**no_fashion, "clipart_classes": 5}}])
    assert chance["retrieval_mean"] == pytest.approx((10 + 50 + 100) / 3)
    assert chance["heldout_average"] == pytest.approx((2 * (10 + 50 + 100) + 20) / 7)


def _runs():
    """Arm `x` beats `clip` on every recall of every seed and loses on every zero-shot top-1."""
    runs = []
    for seed, shift in enumerate((0.02, 0.03, 0.04)):
        runs.append({"arm": "clip", "seed": seed, "eval": {**RECALLS, "clipart_zeroshot": 0.5,
                                                             "fashion_mnist_zeroshot": 0.3}})
        runs.append({"arm": "x", "seed": seed, "eval": {**{k: v + shift for k, v in RECALLS.items()},
                                                          "clipart_zeroshot": 0.5 - 3 * shift,
                                                          "fashion_mnist_zeroshot": 0.3 - shift}})
    return runs


def test_primary_picks_the_verdict_metric():
    verdicts = {}
    for primary in ("retrieval_mean", "zeroshot_mean", "heldout_average", "clipart_zeroshot", "i2t_R@1"):
        summary = report.summarize_runs(_runs(), ["clip", "x"], "clip", primary)
        text = report.markdown(summary, ["clip", "x"], {}, ["# t"])
        title = report.metric_title(primary)
        assert f"| arm | {title} (primary) |" in text and f"| wins ({title}) | verdict ({title}) |" in text
        verdicts[primary] = text.rstrip().splitlines()[-1].split(" | ")[-2:]
    assert verdicts["retrieval_mean"] == ["3/3", "better |"] and verdicts["i2t_R@1"] == ["3/3", "better |"]
    assert verdicts["zeroshot_mean"] == ["0/3", "worse |"] and verdicts["clipart_zeroshot"] == ["0/3", "worse |"]
    # held-out average: (6 x +s - 3s - s) / 8 = +s / 4: +0.5, +0.75, +1.0 points
    d = report.summarize_runs(_runs(), ["clip", "x"], "clip")["paired"]["x"]["heldout_average"]
    assert d["mean"] == pytest.approx(0.75) and d["wins"] == 3 and d["verdict"] == "better"
    assert report.column_keys("zeroshot_mean")[:3] == ["zeroshot_mean", "heldout_average", "retrieval_mean"]


@pytest.mark.parametrize("command", ["ablate", "demo"])
def test_an_unknown_primary_is_refused_in_one_line(tmp_path, capsys, command):
    out = tmp_path / "out"
    args = ["--arms", "clip", "--baseline", "clip"] if command == "ablate" else ["--arms", "clip"]
    assert main([command, "--primary", "mean_recal", "--out", str(out), "--data", str(tmp_path / "missing"),
                 "--fashion-mnist-samples", "0", *args]) == 2
    err = capsys.readouterr().err
    assert err == ("error: --primary 'mean_recal': not a metric of the study; choose one of heldout_average, "
                   "retrieval_mean, zeroshot_mean, i2t_R@1, i2t_R@5, i2t_R@10, t2i_R@1, t2i_R@5, t2i_R@10, "
                   "clipart_zeroshot, fashion_mnist_zeroshot\n")
    assert not out.exists()


def _old_results(path: Path) -> dict:
    """A results.json as `ablate` wrote it before --primary: verdicts on the mean of the six recalls."""
    runs = [{**r, "settings": {"seed": r["seed"]}, "train_seconds": 10.0} for r in _runs()]
    recorded = {"config": {"model": "LightCLIP-Tiny", "image_size": 32, "seeds": [0, 1, 2], "tag": "ablate",
                           "command_line": "open-clip-lightclip ablate --arms clip x=--loss lightclip"},
                "baseline": "clip", "arms": {"clip": ["--loss", "clip"], "x": ["--loss", "lightclip"]},
                "runs": runs, "summary": {"baseline": "clip", "arms": {}, "paired": {
                    "x": {"mean_recall": {"n": 3, "mean": 3.0, "sd": 1.0, "low": 3 - 2.48434, "high": 3 + 2.48434,
                                          "wins": 3, "verdict": "better"}}}}}
    path.write_text(json.dumps(recorded, indent=1))
    return recorded


def test_rereport_from_results_json_reproduces_the_per_arm_numbers(tmp_path, capsys):
    recorded = _old_results(tmp_path / "results.json")
    assert main(["ablate", "--report-only", "--from-results", str(tmp_path / "results.json"), "--report-dir",
                 str(tmp_path / "r"), "--primary", "retrieval_mean"]) == 0
    again = json.loads((tmp_path / "r" / "results.json").read_text())
    assert again["runs"] == recorded["runs"] and again["config"] == recorded["config"]  # as recorded
    assert again["primary"] == "retrieval_mean" and again["rereported"]["first_primary"] == "retrieval_mean"
    old, new = recorded["summary"]["paired"]["x"]["mean_recall"], again["summary"]["paired"]["x"]["retrieval_mean"]
    assert new == pytest.approx(old, abs=1e-4)  # the recorded retrieval verdict, reproduced from the runs' metrics
    assert again["summary"]["arms"]["clip"]["retrieval_mean"]["mean"] == pytest.approx(35.0)
    text = (tmp_path / "r" / "results.md").read_text()
    assert "Primary metric: the retrieval mean" in text and "| x | +3.0 [+0.5, +5.5] |" in text
    assert (tmp_path / "r" / "results.png").stat().st_size > 10_000

    # the default primary, written back into the study's own folder; a second re-report changes nothing
    assert main(["ablate", "--from-results", str(tmp_path / "results.json")]) == 0
    first = (tmp_path / "results.md").read_text()
    assert "verdict (held-out average) |" in first and "first reported with their verdicts on the retrieval mean" in first
    assert main(["ablate", "--from-results", str(tmp_path / "results.json")]) == 0
    assert (tmp_path / "results.md").read_text() == first
    assert json.loads((tmp_path / "results.json").read_text())["runs"] == recorded["runs"]
    capsys.readouterr()
    assert main(["ablate", "--from-results", str(tmp_path / "results.json"), "--arms", "clip"]) == 2
    assert "--from-results reports the arms of its results.json" in capsys.readouterr().err


def test_rereport_pairs_a_committed_study_against_another_of_its_arms(tmp_path, capsys):
    """--from-results --baseline ARM: the same runs paired against ARM (no run folder needed); the differences are
    the study's negated, the header marks the new baseline, and the study's own report is never replaced."""
    study = tmp_path / "study"
    study.mkdir()
    _old_results(study / "results.json")
    assert main(["ablate", "--from-results", str(study / "results.json")]) == 0
    own = (study / "results.md").read_text()
    capsys.readouterr()
    assert main(["ablate", "--from-results", str(study / "results.json"), "--baseline", "x"]) == 2
    assert capsys.readouterr().err == (f"error: --baseline x would replace the study's own report (paired against "
                                       f"clip) in {study}: give another --report-dir\n")
    assert main(["ablate", "--from-results", str(study / "results.json"), "--baseline", "y", "--report-dir",
                 str(tmp_path / "vs-x")]) == 2
    assert "--baseline y: not an arm of" in capsys.readouterr().err
    assert (study / "results.md").read_text() == own and not (tmp_path / "vs-x").exists()

    assert main(["ablate", "--from-results", str(study / "results.json"), "--baseline", "x", "--report-dir",
                 str(tmp_path / "vs-x")]) == 0
    again = json.loads((tmp_path / "vs-x" / "results.json").read_text())
    assert again["baseline"] == "x" and set(again["summary"]["paired"]) == {"clip"}
    # x vs clip: held-out average +0.5, +0.75, +1.0 points (test above); clip vs x: the negatives
    d = again["summary"]["paired"]["clip"]["heldout_average"]
    assert d["mean"] == pytest.approx(-0.75) and d["wins"] == 0 and d["verdict"] == "worse"
    text = (tmp_path / "vs-x" / "results.md").read_text()
    assert "- `x` (baseline): `--loss lightclip`" in text and "- `clip`: `--loss clip`" in text
    assert "Paired against `x`; the study's own baseline is `clip`." in text
    assert "| clip | -0.8 [-1.4, -0.1] |" in text, text
    assert (study / "results.md").read_text() == own


@pytest.mark.parametrize("study", sorted(p.parent.name for p in (REPO / "docs" / "ablation").glob("*/results.json")
                                         if "config" in json.loads(p.read_text())))
def test_committed_studies_are_reported_under_their_declared_primary(study, tmp_path):
    """Each committed study's tables are what its recorded runs give under the primary it declares."""
    path = REPO / "docs" / "ablation" / study / "results.json"
    committed = json.loads(path.read_text())
    if "primary" not in committed:
        pytest.skip(f"{study}: not re-reported yet (a study still running)")
    rereport(path, committed["primary"], tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["summary"] == committed["summary"]
