"""`--loss lightclip` through the real trainer: flags, checks, accum-freq, resume with the schedule."""
import re

import pytest
import torch
from open_clip_train.params import parse_args

BASE = ["--train-data", "x.tar", "--device", "cpu", "--loss", "lightclip"]


def _error(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        parse_args([*BASE, *argv])
    assert exc.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("argv,message", [
    (["--model", "RN50"], "--loss lightclip needs a LightCLIP model (e.g. LightCLIP-MNv3), not 'RN50'"),
    (["--model", "LightCLIP-Tiny", "--lightclip-token-weight", "-1"], "--lightclip-token-weight must be >= 0"),
    (["--model", "LightCLIP-Tiny", "--lightclip-mask-prob", "1.5"], "--lightclip-mask-prob must be in (0, 1), got 1.5"),
    (["--model", "LightCLIP-Tiny", "--lightclip-mask-prob", "0"], "--lightclip-mask-prob must be in (0, 1), got 0.0"),
    (["--model", "LightCLIP-Tiny", "--lightclip-mlm-weight", "0.5", "--lightclip-fusion-layers", "2", "7"],
     "--lightclip-fusion-layers [7] don't exist: LightCLIP-Tiny's text tower has layers 1..6"),
    (["--model", "LightCLIP-Tiny", "--lightclip-instance-weight", "0", "--lightclip-token-weight", "0",
      "--lightclip-mlm-weight", "0"], "all --lightclip-*-weight are 0"),
    (["--model", "LightCLIP-Tiny", "--skip-scheduler"], "--skip-scheduler stops the step count"),
    (["--model", "LightCLIP-Tiny", "--lightclip-sinkhorn-iters", "0"], "--lightclip-sinkhorn-iters must be >= 1, got 0"),
    (["--model", "LightCLIP-Tiny", "--lightclip-sinkhorn-eps", "0"], "--lightclip-sinkhorn-eps must be > 0, got 0.0"),
    (["--model", "LightCLIP-Tiny", "--lightclip-sinkhorn-eps", "-0.1"], "--lightclip-sinkhorn-eps must be > 0"),
    (["--model", "LightCLIP-Tiny", "--lightclip-token-chunk", "0"], "--lightclip-token-chunk must be >= 1"),
    (["--model", "LightCLIP-Tiny", "--lightclip-token-dim", "0"], "--lightclip-token-dim must be >= 1, got 0"),
    (["--model", "LightCLIP-Tiny", "--lightclip-token-negatives", "-1"], "--lightclip-token-negatives must be >= 0"),
    (["--model", "LightCLIP-Tiny", "--lightclip-token-negatives", "8", "--lightclip-token-scope", "local"],
     "--lightclip-token-negatives picks negatives from the gathered batch"),
    # range checks apply whether the term is on or off (a 7th layer was accepted silently with MLM off)
    (["--model", "LightCLIP-Tiny", "--lightclip-mlm-weight", "0", "--lightclip-fusion-layers", "7"],
     "--lightclip-fusion-layers [7] don't exist"),
    (["--model", "LightCLIP-Tiny", "--lightclip-token-weight", "0", "--lightclip-sinkhorn-eps", "0"],
     "--lightclip-sinkhorn-eps must be > 0"),
])
def test_bad_combinations_stop_before_training(capsys, argv, message):
    assert message in _error(capsys, *argv)


def test_defaults_train_the_papers_three_levels(caplog):
    """--loss lightclip is LightCLIP: instance with progressive soft labels, token matching and MLM with fusion;
    the trainer says so in one line when it builds the loss."""
    import open_clip

    args = parse_args([*BASE, "--model", "LightCLIP-MNv3"])
    assert args.lightclip_matching == "sinkhorn" and args.lightclip_fusion_layers == [2, 4, 6]
    assert (args.lightclip_instance_weight, args.lightclip_token_weight, args.lightclip_mlm_weight) == (1.0, 1.0, 0.5)
    args.rank, args.world_size = 0, 1
    with caplog.at_level("INFO"):
        open_clip.create_loss(args)  # the trainer's create_loss, through the seam
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("--loss lightclip:")]
    assert line == ["--loss lightclip: instance x1 (soft labels e(t) linear 0 -> 0.2, spread uniform) + token x1 "
                    "(sinkhorn eps 0.05, 10 iters, kernel scaling; global scope, all negatives) + mlm x0.5"]


def test_a_flag_of_a_term_that_is_off_warns_once(caplog):
    with caplog.at_level("WARNING"):
        parse_args([*BASE, "--model", "LightCLIP-Tiny", "--lightclip-token-weight", "0", "--lightclip-matching",
                    "hungarian", "--lightclip-sinkhorn-iters", "10", "--lightclip-mlm-weight", "0.5"])
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    # the one set away from its default is named; one left at its default, or of a term that is on, is not
    assert warnings == ["--lightclip-matching hungarian trains nothing while the token term is off "
                        "(--lightclip-token-weight 0)"]


def test_hungarian_matching_on_a_gpu_says_what_it_costs(caplog):
    with caplog.at_level("WARNING"):
        parse_args(["--train-data", "x.tar", "--device", "cuda", "--loss", "lightclip", "--model", "LightCLIP-Tiny",
                    "--lightclip-matching", "hungarian"])
    assert any("scipy on the CPU" in r.getMessage() for r in caplog.records)


def _schedule_lines(log):
    """e(t) of each per-step line (the seam appends it to the trainer's 'Train Epoch' line)."""
    return [float(x) for x in re.findall(r"Train Epoch: .* e\(t\): ([\d.]+)", log)]


@pytest.mark.slow
def test_train_with_accum_freq_then_resume_where_it_stopped(train):
    extra = ["--force-image-size", "64", "--accum-freq", "2", "--lightclip-soft-label-max", "0.3",
             "--log-every-n-steps", "1", "--lightclip-token-temperature", "own"]  # default weights: every term;
    # its own token temperature is a per-sample output the trainer concatenates under --accum-freq (it crashed)
    _, ckpt_dir = train(loss="lightclip", extra=extra, epochs=1, name="first")
    log = (ckpt_dir.parent / "out.log").read_text()
    for term in ("Instance_loss", "Token_loss", "Mlm_loss"):
        assert term in log
    assert "--loss lightclip: instance x1 (soft labels e(t) linear 0 -> 0.3" in log
    assert _schedule_lines(log) == [0.0, 0.15]  # 32 samples / (8 x accum 2) = 2 optimizer steps: t = 0, 0.5
    sd = torch.load(ckpt_dir / "epoch_1.pt", map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.startswith("lightclip_train.fusion.") for k in sd)

    _, ckpt_dir2 = train(loss="lightclip", extra=[*extra, "--resume", str(ckpt_dir / "epoch_1.pt")],
                         epochs=2, name="resumed")
    log2 = (ckpt_dir2.parent / "out.log").read_text()
    assert "=> resuming checkpoint" in log2
    assert _schedule_lines(log2) == [0.15, 0.225]  # picks up at step 2 of 4 (t = 0.5, 0.75)
    assert (ckpt_dir2 / "epoch_2.pt").is_file()


def test_help_shows_every_plugin_flags_default(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = capsys.readouterr().out
    blocks = [re.sub(r"\s+", " ", b) for b in re.split(r"\n  (?=--[a-z])", text[text.index("open-clip-lightclip:"):])]
    flags = [b for b in blocks if b.startswith(("--lightclip-", "--cliplite-", "--distill-"))
             and not b.startswith(("--distill-cache", "--distill-teacher "))]  # a switch, and a list without default
    assert len(flags) > 25
    missing = [b.split()[0] for b in flags if "default" not in b]
    assert missing == []
