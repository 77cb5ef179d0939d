"""Every float flag the plugin adds to the trainer is a finite number, and a flag that trains nothing says so:
through the trainer's own ``parse_args`` (issue 26 items 3)."""
import pytest
from open_clip_train.params import parse_args

BASE = ["--train-data", "x.tar", "--device", "cpu", "--model", "LightCLIP-Tiny"]


def _error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exc:
        parse_args([*BASE, *argv])
    assert exc.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def _warnings(caplog, *argv) -> list:
    with caplog.at_level("WARNING"):
        parse_args([*BASE, *argv])
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


@pytest.mark.parametrize("loss,flag,values", [
    # nan switched the term off silently (nan > 0 is False); inf trained on NaN losses
    ("lightclip", "--lightclip-instance-weight", ["nan"]),
    ("lightclip", "--lightclip-token-weight", ["inf"]),
    ("lightclip", "--lightclip-mlm-weight", ["nan"]),
    ("lightclip", "--lightclip-soft-label-max", ["nan"]),
    ("lightclip", "--lightclip-sinkhorn-eps", ["inf"]),
    ("lightclip", "--lightclip-mask-prob", ["nan"]),
    ("lightclip", "--lightclip-mask-rule", ["nan", "0.5", "0.5"]),  # passed the sum-to-1 check
    ("cliplite", "--cliplite-prior-weight", ["inf"]),
    ("clip", "--distill-affinity-weight", ["nan"]),
    ("clip", "--distill-feature-weight", ["inf"]),
    ("clip", "--distill-teacher-logit-scale", ["100", "nan"]),
])
def test_non_finite_values_stop_at_parse_time_naming_flag_and_value(capsys, loss, flag, values):
    bad = next(v for v in values if v in ("nan", "inf"))
    assert _error(capsys, "--loss", loss, flag, *values).endswith(
        f"error: argument {flag}: must be a finite number, got {bad}")


def test_every_plugin_float_flag_is_finite_checked():
    """No plugin flag parses with a bare ``float`` (a new flag gets the check by using ``finite_float``)."""
    import argparse

    from open_clip_lightclip.losses import flag_defaults
    from open_clip_lightclip.losses.flags import finite_float
    from open_clip_lightclip.upstream.trainer_args import add_args

    parser = argparse.ArgumentParser()
    add_args(parser)
    dests = set(flag_defaults())
    floats = {a.dest: a.type for a in parser._actions if a.dest in dests and a.type in (float, finite_float)}
    assert len(floats) >= 11 and all(t is finite_float for t in floats.values()), floats


def test_an_absurd_weight_warns_once_and_trains(caplog):
    warnings = _warnings(caplog, "--loss", "lightclip", "--lightclip-token-weight", "1e30")
    assert warnings == ["--lightclip-token-weight 1e+30 is far above any useful loss weight (> 1e+06): that term's "
                        "loss and gradients are scaled by it; did you mean a smaller value?"]


def test_a_flag_of_another_objective_warns_once(caplog):
    warnings = _warnings(caplog, "--loss", "clip", "--lightclip-mask-prob", "5", "--lightclip-matching", "sinkhorn",
                         "--cliplite-prior-weight", "0.1")
    # set away from its default: named; left at its default (sinkhorn): not
    assert warnings == ["--lightclip-mask-prob 5.0 trains nothing with --loss clip (it belongs to --loss lightclip)",
                        "--cliplite-prior-weight 0.1 trains nothing with --loss clip (it belongs to --loss cliplite)"]


def test_plugin_flags_without_loss_or_teacher_warn(caplog):
    warnings = _warnings(caplog, "--lightclip-soft-label-max", "0.3", "--distill-feature-weight", "1")
    assert warnings == [
        "--lightclip-soft-label-max 0.3 trains nothing without --loss (it belongs to --loss lightclip)",
        "--distill-feature-weight 1.0 trains nothing without a teacher (--distill-teacher, --distill-cache or "
        "--distill-reinforced)"]


def test_every_objectives_own_idle_flags_and_distillations_say_why(caplog):
    """One builder for every idle-flag line: CLIP-Lite's prior flags with the prior off warned nothing before (only
    LightCLIP's check named its own off terms), and --distill-synthetic-weight without reinforced shards was said to
    lack a teacher or the feature term."""
    assert _warnings(caplog, "--loss", "cliplite", "--cliplite-prior-on", "text", "--batch-size", "8") == [
        "--cliplite-prior-on text trains nothing while the prior term is off (--cliplite-prior-weight 0)"]
    caplog.clear()
    assert _warnings(caplog, "--loss", "clip", "--distill-cache", "--distill-synthetic-weight", "0.5",
                     "--distill-affinity-weight", "1") == [
        "--distill-synthetic-weight 0.5 trains nothing without --distill-reinforced"]


def test_flags_of_the_run_s_own_objective_do_not_warn(caplog):
    assert _warnings(caplog, "--loss", "cliplite", "--cliplite-prior-weight", "0.1", "--cliplite-negatives", "2",
                     "--batch-size", "8") == []
