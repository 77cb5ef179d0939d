"""`open-clip-lightclip doctor` (issue 24): the fast mode's checks pass on the CPU, a broken objective fails by
name, bad settings stop in one line."""
import json
import math

import pytest

from conftest import run_python
from open_clip_lightclip.cli import main

TERMS = {
    "clip": {"contrastive_loss"},
    "lightclip": {"instance_loss", "token_loss", "mlm_loss"},
    "cliplite": {"cliplite_jsd"},
    "clip+distill": {"contrastive_loss", "distill_affinity_loss", "distill_feature_loss"},
}


def _doctor(tmp_path, precision, *extra):
    path = tmp_path / "doctor.json"
    code = main(["doctor", "--fast", "--device", "cpu", "--precision", precision, "--json", str(path), *extra])
    return code, json.loads(path.read_text())


def _check_report(report, precision):
    assert report["ok"] and not report["failures"]
    assert report["precision"] == precision and report["device"] == "cpu" and report["model"] == "LightCLIP-Tiny"
    assert {name: set(e["terms"]) for name, e in report["objectives"].items()} == TERMS
    for name, entry in report["objectives"].items():
        for term, row in entry["terms"].items():
            assert row["ok"] and math.isfinite(row["value"]) and math.isfinite(row["fp32_ref"]), (name, term)
            assert row["rel_diff"] <= report["tolerance"]
        assert entry["round_trip_max_abs_diff"] <= 1e-6
        assert entry["step_s"] > 0 and entry["step_ratio"] > 0
    assert report["objectives"]["clip"]["step_ratio"] == 1.0


def test_fast_fp32_passes_every_check_and_prints_one_table(tmp_path, capsys):
    code, report = _doctor(tmp_path, "fp32")
    out = capsys.readouterr().out
    assert code == 0, out
    _check_report(report, "fp32")
    assert report["tolerance"] == 1e-5
    assert out.startswith("doctor: device cpu, precision fp32 (no autocast), model LightCLIP-Tiny at 64 px, batch 4, 2 steps")
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| objective | term | value | fp32 ref | rel diff | ok | step time ratio to clip |")
    assert len(rows) == 1 + sum(len(t) + 1 for t in TERMS.values())  # a row per term + a round trip row per objective
    assert "doctor: all 20 checks passed" in out


@pytest.mark.slow  # fp16 / bf16 kernels on the CPU: ~1 min each on 2 loaded cores
@pytest.mark.parametrize("precision", ["amp", "amp_bf16"])
def test_fast_autocast_passes_every_check(tmp_path, capsys, precision):
    code, report = _doctor(tmp_path, precision)
    out = capsys.readouterr().out
    assert code == 0, out
    _check_report(report, precision)
    dtype = "torch.float16" if precision == "amp" else "torch.bfloat16"
    assert f"(torch.autocast('cpu', dtype={dtype})" in out.splitlines()[0]


def test_a_nan_term_fails_by_name(tmp_path, capsys, monkeypatch):
    from open_clip_lightclip.losses.cliplite import ClipLiteLoss

    forward = ClipLiteLoss.forward

    def broken(self, *args, **kwargs):
        return {k: v * float("nan") for k, v in forward(self, *args, **kwargs).items()}

    monkeypatch.setattr(ClipLiteLoss, "forward", broken)
    code, report = _doctor(tmp_path, "fp32", "--steps", "1", "--objectives", "clip", "cliplite")
    out = capsys.readouterr().out
    assert code == 1 and not report["ok"] and list(report["objectives"]) == ["clip", "cliplite"]
    assert "FAIL cliplite: cliplite_jsd is not finite (nan) at step 1 [check: finite]" in out
    assert report["objectives"]["cliplite"]["terms"]["cliplite_jsd"]["finite"] is False
    assert all(e["ok"] for name, e in report["objectives"].items() if name != "cliplite")
    assert "check(s) failed" in out.splitlines()[-1]


def test_a_term_off_its_fp32_reference_fails_the_fp32_check(tmp_path, capsys, monkeypatch):
    import torch

    from open_clip_lightclip.losses.cliplite import ClipLiteLoss

    forward = ClipLiteLoss.forward

    def off_in_training(self, *args, **kwargs):  # the reference runs without gradient, the steps with it
        terms = forward(self, *args, **kwargs)
        return {k: v * 1.001 for k, v in terms.items()} if torch.is_grad_enabled() else terms

    monkeypatch.setattr(ClipLiteLoss, "forward", off_in_training)
    code, report = _doctor(tmp_path, "fp32", "--steps", "1", "--objectives", "cliplite")
    out = capsys.readouterr().out
    assert code == 1
    assert len(report["failures"]) == 1 and report["failures"][0].startswith("cliplite: cliplite_jsd = ")
    assert "relative difference 1.00e-03 > tolerance 1e-05 [check: fp32]" in report["failures"][0]
    assert f"FAIL {report['failures'][0]}" in out


@pytest.mark.parametrize("argv, message", [
    (["--precision", "fp8"], "error: unknown --precision 'fp8'; choose one of fp32, amp, amp_bf16"),
    (["--json", "/nonexistent-folder/x.json"], "error: --json /nonexistent-folder/x.json: folder /nonexistent-folder "
                                              "does not exist"),
    (["--device", "nonsense"], "error: --device 'nonsense': "),
    (["--device", "cuda"], "error: --device cuda: CUDA is not available here"),
    (["--model", "LightCLIP-Nope"], "error: unknown --model 'LightCLIP-Nope'"),
    (["--batch-size", "1"], "error: --batch-size must be at least 2"),
    (["--objectives", "clip", "infonce"], "error: unknown --objectives infonce; choose from clip lightclip"),
])
def test_bad_settings_stop_with_one_line(argv, message, capsys):
    import torch

    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(["doctor", "--fast", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1, captured
    assert captured.err.startswith(message), captured.err


def test_cli_reports_a_bad_setting_without_a_traceback():
    proc = run_python(["-m", "open_clip_lightclip.cli", "doctor", "--precision", "fp8"], check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == ["error: unknown --precision 'fp8'; choose one of fp32, amp, amp_bf16, "
                                        "amp_bfloat16, bf16, fp16"]
