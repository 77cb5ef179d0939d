"""``open-clip-lightclip list-models``: bare names, or the plugin's configs as a table."""
from open_clip_lightclip.cli import main


def test_list_models_plugin_only_prints_towers_sizes_and_parameters(capsys):
    assert main(["list-models", "--plugin-only"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["model", "image", "tower", "image", "size", "image", "params", "text", "params"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert all(name.startswith("LightCLIP-") for name in rows)
    # counted on the meta device, equal to a real build's (bench inference --towers: 699 k for Tiny's image tower)
    assert rows["LightCLIP-Tiny"] == ["mobilenetv3_small_050", "96", "0.70", "M", "7.53", "M"]
    assert rows["LightCLIP-MNv3"] == ["mobilenetv3_large_100", "224", "4.86", "M", "44.51", "M"]


def test_list_models_without_plugin_only_prints_bare_names(capsys):
    assert main(["list-models"]) == 0
    names = capsys.readouterr().out.split()
    assert "LightCLIP-Tiny" in names and "ViT-B-32" in names
