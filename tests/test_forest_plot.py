"""The forest plot of ``ablate``: the primary first with the baseline's score, one x scale, controls apart."""
from open_clip_lightclip.studies import report


def _diff(mean: float, half: float) -> dict:
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": 3, "wins": 2}


def _summary(primary_half: float) -> dict:
    """clip as the baseline; ``token`` ~-8 points on a recall (+-20), ``rerun-control`` ~0 everywhere."""
    keys = ["heldout_average", "retrieval_mean", "i2t_R@1"]
    paired = {"token": {"heldout_average": _diff(-1.0, primary_half), "retrieval_mean": _diff(-2.0, 1.0),
                        "i2t_R@1": _diff(-8.0, 20.0)},
              "rerun-control": {k: _diff(0.1, 0.5) for k in keys}}
    arms = {a: {k: {"mean": 16.8, "sd": 0.9, "n": 3} for k in keys} for a in ("clip", "token", "rerun-control")}
    return {"baseline": "clip", "primary": "heldout_average", "arms": arms, "paired": paired}


def test_forest_plot_writes_a_png_with_one_shared_x_scale(tmp_path):
    path = tmp_path / "results.png"
    limits = report.forest_plot(path, _summary(primary_half=15.0), ["clip", "token", "rerun-control"], "a study")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(limits) == ["heldout_average", "retrieval_mean", "i2t_R@1"]  # the primary leads
    assert len(set(limits.values())) == 1  # a +-1 bar and a +-20 bar on one scale
    low, high = limits["i2t_R@1"]
    assert low < -28 and high > 12


def test_forest_plot_zooms_the_primary_only_when_it_says_so():
    fig = report.forest_figure(_summary(primary_half=1.0), ["clip", "token", "rerun-control"], "a study")
    limits = fig.panel_limits
    assert limits["retrieval_mean"] == limits["i2t_R@1"]  # the metric panels share one scale
    assert limits["heldout_average"][1] - limits["heldout_average"][0] < limits["i2t_R@1"][1] - limits["i2t_R@1"][0]
    primary, *others = fig.axes
    assert "own x scale" in primary.get_title() and not any("own x scale" in ax.get_title() for ax in others)
    assert "clip scores 16.8 ± 0.9 %" in primary.get_title()
    assert "baseline clip: held-out average 16.8 ± 0.9 %" in fig._suptitle.get_text()
    assert "better →" in primary.get_xlabel()
    # controls apart and labelled: below the tested arms, after a gap
    labels = [t.get_text() for t in primary.get_yticklabels()]
    assert labels == ["token", "rerun-control (control)"]
    assert primary.get_yticks()[1] - primary.get_yticks()[0] > 1


def test_controls_by_name_or_marked():
    assert report.is_control("clip-control") and report.is_control("Control-B")
    assert report.is_control("clip-1thread", controls=["clip-1thread"]) and not report.is_control("clip-1thread")
