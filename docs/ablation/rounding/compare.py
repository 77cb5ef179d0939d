"""The rounding control (an A/A test): `clip` retrained with 1 thread against the recorded `clip` runs of the
10-seed study (2 threads), beside the study's LightCLIP arms. Same seed, settings, initial weights and data
order: the only difference is the order in which sums are rounded, so its paired difference is the noise floor
that no objective can be told apart from. Writes results.md, results.json and results.png next to this file
with `ablate`'s own report functions.

    open-clip-lightclip ablate --arms clip --baseline clip --seeds 0 1 2 3 4 5 6 7 8 9 --parallel 2 --threads 1 \
        --out study/aa --data study/core/data
    python docs/ablation/rounding/compare.py study/aa/results.json
"""
import json
import sys
import time
from pathlib import Path

from open_clip_lightclip.studies import report

HERE = Path(__file__).resolve().parent
STUDY = HERE.parent / "all10" / "results.json"  # the 10-seed study: clip, softlabels, mlm, softlabels-mlm
CONTROL = "clip-1thread"


def main(retrained: str) -> None:
    study = json.loads(STUDY.read_text())
    control = [{**r, "arm": CONTROL} for r in json.loads(Path(retrained).read_text())["runs"]
               if r["arm"] == "clip" and "eval" in r]
    recorded = {r["seed"]: r["eval"] for r in study["runs"] if r["arm"] == "clip" and "eval" in r}
    same = sorted(r["seed"] for r in control if r["eval"] == recorded.get(r["seed"]))
    runs = study["runs"] + control
    arms = ["clip", CONTROL] + [a for a in study["arms"] if a != "clip"]
    summary = report.summarize_runs(runs, arms, "clip")
    key = report.MEAN_RECALL[0]
    spread = {a: summary["paired"][a][key]["sd"] for a in arms[1:]}
    header = [
        "# Rounding control: `clip` retrained with 1 thread against the recorded 2-thread `clip` runs",
        "",
        f"`{CONTROL}`: the `clip` arm of `docs/ablation/all10/` retrained with `--threads 1` (same seeds, settings, "
        "initial weights and data order; only the rounding order of sums differs). The other arms are the 10-seed "
        "study's, paired with the same recorded `clip` runs.",
        f"Seeds whose retraining equals the record bit for bit (a record trained with 1 thread): {same or 'none'}.",
        "Standard deviation over seeds of the paired difference to `clip` (mean of the six recalls, points): "
        + ", ".join(f"{a} {sd:.2f}" if sd is not None else f"{a} (one seed)" for a, sd in spread.items()) + ".",
        f"Date: {time.strftime('%Y-%m-%d')}. Command: see `compare.py`.",
    ]
    (HERE / "results.md").write_text(report.markdown(summary, arms, {}, header))
    (HERE / "results.json").write_text(json.dumps(
        {"baseline": "clip", "arms": arms, "identical_seeds": same, "runs": runs, "summary": summary}, indent=1))
    report.forest_plot(HERE / "results.png", summary, arms, "LightCLIP-Tiny, 128 px, 5x80 steps of 64: rounding control")
    print((HERE / "results.md").read_text())


if __name__ == "__main__":
    main(sys.argv[1])
