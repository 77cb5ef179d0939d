"""`open-clip-lightclip build-shards` on small generated folders, CSVs and a fake clip-art tree."""
import gzip
import json
import os
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from open_clip_lightclip.data import shards as ds_shards, sources as ds_sources
from open_clip_lightclip.cli import main


def _image(path: Path, color=(200, 30, 30), size=(40, 24), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


@pytest.fixture
def folder(tmp_path):
    """12 good captioned images in two categories, plus a corrupt image, an empty caption, a missing caption."""
    src = tmp_path / "src"
    for i in range(6):
        _image(src / "cats" / f"cat{i}.png", (200, 10 * i, 30))
        (src / "cats" / f"cat{i}.txt").write_text(f"a red cat number {i}\n")
        _image(src / "dogs" / f"dog.{i}.jpg", (30, 10 * i, 200), size=(24, 40))
        (src / "dogs" / f"dog.{i}.txt").write_text(f"a blue dog number {i}")
    _image(src / "cats" / "ghost.png", (0, 0, 0, 0), mode="RGBA")  # fully transparent: must come out white
    (src / "cats" / "ghost.txt").write_text("a transparent ghost")
    (src / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (src / "dogs" / "broken.txt").write_text("a corrupt image")
    _image(src / "dogs" / "silent.png")
    (src / "dogs" / "silent.txt").write_text("  \n")  # empty caption
    _image(src / "dogs" / "nocaption.png")  # no sidecar at all
    return src


def _samples(out: Path, split: str):
    return [s for p in sorted(out.glob(f"{split}-*.tar")) for s in ds_shards.read_shard_samples(str(p))]


def _build(*argv):
    return main(["build-shards", *map(str, argv), "--no-progress", "--workers", "1"])


def test_folder_source_skips_and_counts_broken_and_uncaptioned(folder, tmp_path):
    out = tmp_path / "out"
    assert _build("folder", folder, "--out", out, "--image-size", "32", "--heldout-fraction", "0.3") == 0
    info = json.loads((out / "build_info.json").read_text())
    assert info["skipped_broken"] == 1 and info["broken_files"][0].endswith("broken.jpg")
    assert info["skipped_no_caption"] == 2
    assert info["written"]["train"] + info["written"]["heldout"] == 13
    assert info["written"]["heldout"] >= 1 and info["written"]["train"] >= 1

    sizes = json.loads((out / "sizes.json").read_text())
    assert sum(v for k, v in sizes.items() if k.startswith("train-")) == info["written"]["train"]
    assert sum(v for k, v in sizes.items() if k.startswith("heldout-")) == info["written"]["heldout"]
    assert info["train_data"] == str(out / "train-00000.tar")

    samples = _samples(out, "train") + _samples(out, "heldout")
    by_caption = {cap: (key, im, meta) for key, im, cap, meta in samples}
    assert set(by_caption) == {f"a red cat number {i}" for i in range(6)} | {
        f"a blue dog number {i}" for i in range(6)} | {"a transparent ghost"}
    for key, im, meta in by_caption.values():
        assert im.size == (32, 32) and im.mode == "RGB"
        assert "." not in key  # webdataset splits keys at the first dot
    assert by_caption["a red cat number 0"][2]["category"] == "cats"
    assert by_caption["a blue dog number 3"][2]["category"] == "dogs"
    # transparency composited on white
    assert by_caption["a transparent ghost"][1].getpixel((16, 16)) == (255, 255, 255)
    # the picture is padded (aspect kept) on white and keeps its colour in the middle
    r, g, b = by_caption["a red cat number 0"][1].getpixel((16, 16))
    assert r > 150 and b < 80
    assert by_caption["a red cat number 0"][1].getpixel((16, 1)) == (255, 255, 255)

    # each sample is image + caption + metadata, as OpenCLIP's webdataset reader expects
    with tarfile.open(out / "train-00000.tar") as tar:
        exts = sorted({m.name.split(".", 1)[1] for m in tar})
    assert exts == ["json", "png", "txt"]


def test_never_overwrites_existing_shards(folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert _build("folder", folder, "--out", out) == 0
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    assert _build("folder", folder, "--out", out) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()} == before


def test_split_is_deterministic_and_independent_of_order(tmp_path):
    keys = [f"item{i}" for i in range(2000)]
    held = {k for k in keys if ds_shards.is_heldout(k, 0.1)}
    assert 150 < len(held) < 250
    assert held == {k for k in reversed(keys) if ds_shards.is_heldout(k, 0.1)}
    assert held != {k for k in keys if ds_shards.is_heldout(k, 0.1, seed=1)}

    src = tmp_path / "src"
    for i in range(30):
        _image(src / f"img{i}.png", (i * 8, 0, 0))
        (src / f"img{i}.txt").write_text(f"picture {i}")
    records = list(ds_sources.folder_records(src))
    a = ds_shards.build_shards(records, tmp_path / "a", image_size=16, heldout_fraction=0.3, progress=False)
    b = ds_shards.build_shards(list(reversed(records)), tmp_path / "b", image_size=16, heldout_fraction=0.3,
                        progress=False)
    ds_shards.build_shards(records[:15], tmp_path / "c", image_size=16, heldout_fraction=0.3, progress=False,
                        workers=2)

    def heldout_captions(d):
        return {cap for _, _, cap, _ in _samples(d, "heldout")}

    assert a["written"] == b["written"]
    assert heldout_captions(tmp_path / "a") == heldout_captions(tmp_path / "b")
    # a sample's side depends only on its key: a subset keeps the same assignment
    subset = {r.caption for r in records[:15]}
    assert heldout_captions(tmp_path / "c") == heldout_captions(tmp_path / "a") & subset
    # same bytes for the same input (the image data; tar mtimes aside)
    ims_a = {cap: im.tobytes() for _, im, cap, _ in _samples(tmp_path / "a", "train")}
    ims_c = {cap: im.tobytes() for _, im, cap, _ in _samples(tmp_path / "c", "train")}
    assert all(ims_a[cap] == ims_c[cap] for cap in ims_c)


def test_csv_and_tsv_with_openclip_column_convention(tmp_path):
    imgs = tmp_path / "imgs"
    for i in range(5):
        _image(imgs / f"{i}.png", (0, 40 * i, 0))
    (imgs / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    tsv = tmp_path / "train.tsv"
    rows = [f"imgs/{i}.png\tgreen square {i}" for i in range(5)] + [
        "imgs/bad.png\ta corrupt file", "imgs/missing.png\tno such file", "imgs/0.png\t"]
    tsv.write_text("filepath\ttitle\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert _build("csv", tsv, "--out", out, "--image-size", "24", "--heldout-fraction", "0") == 0
    info = json.loads((out / "build_info.json").read_text())
    assert info["written"] == {"train": 5, "heldout": 0}
    assert info["skipped_broken"] == 2 and info["skipped_no_caption"] == 1
    assert sorted(cap for _, _, cap, _ in _samples(out, "train")) == [f"green square {i}" for i in range(5)]

    # a comma CSV with other column names and absolute paths
    csv_path = tmp_path / "other.csv"
    csv_path.write_text("image,caption,label\n" + "\n".join(
        f"{imgs / f'{i}.png'},\"shade {i}, green\",greens" for i in range(5)) + "\n")
    out2 = tmp_path / "out2"
    assert _build("csv", csv_path, "--out", out2, "--csv-img-key", "image", "--csv-caption-key", "caption",
                  "--csv-category-key", "label", "--heldout-fraction", "0") == 0
    samples = _samples(out2, "train")
    assert sorted(cap for _, _, cap, _ in samples) == [f"shade {i}, green" for i in range(5)]
    assert {meta["category"] for *_, meta in samples} == {"greens"}
    # a wrong column name is a one-line error, not a traceback
    assert _build("csv", csv_path, "--out", tmp_path / "out3", "--csv-img-key", "filepath") == 1


SVG = """<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:cc="http://web.resource.org/cc/"
     xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <metadata><rdf:RDF><cc:Work rdf:about="">
    <dc:title>{title}</dc:title>
    <dc:subject><rdf:Bag>{keywords}</rdf:Bag></dc:subject>
    <dc:creator><cc:Agent><dc:title>Some Author</dc:title></cc:Agent></dc:creator>
  </cc:Work></rdf:RDF></metadata>
</svg>
"""


def _clipart(root: Path, rel: str, title: str, keywords=()):
    _image(root / "png" / f"{rel}.png", (10, 120, 10, 255), mode="RGBA")
    svg = root / "svg" / f"{rel}.svg"
    svg.parent.mkdir(parents=True, exist_ok=True)
    svg.write_text(SVG.format(title=title, keywords="".join(f"<rdf:li>{k}</rdf:li>" for k in keywords)))


def test_openclipart_captions_and_dropped_folders(tmp_path):
    root = tmp_path / "openclipart"
    _clipart(root, "animals/birds/bird_of_peace_01", "bird of peace", ["", "animal", "bird", "peace", "hash"])
    _clipart(root, "food/apple_01", "Red Apple", ["food", "fruit", "http://example.org", "apple"])
    _clipart(root, "unsorted/thing_01", "Various Cliparts", ["gadget"])
    _clipart(root, "computer/icons/app_01", "an icon", ["icon"])
    _clipart(root, "shapes/arrows/arrow_01", "arrow", ["arrow"])
    _clipart(root, "special/gradients/gradient-blue", "blue gradient", ["gradient"])
    (root / "png" / "food" / "fruit").mkdir(parents=True)
    os.symlink("../apple_01.png", root / "png" / "food" / "fruit" / "apple_01.png")  # a duplicate
    _image(root / "png" / "food" / "no_svg_pizza_01.png")  # no SVG: caption from the file name

    records = {r.key: r for r in ds_sources.openclipart_records(root)}
    assert set(records) == {"animals/birds/bird_of_peace_01", "food/apple_01", "unsorted/thing_01",
                            "food/no_svg_pizza_01"}
    assert records["animals/birds/bird_of_peace_01"].caption == "bird of peace: animal"
    assert records["animals/birds/bird_of_peace_01"].category == "animals"
    assert records["food/apple_01"].caption == "Red Apple: food, fruit"
    assert records["unsorted/thing_01"].caption == "thing: gadget"  # junk title: the file name instead
    assert records["food/no_svg_pizza_01"].caption == "no svg pizza"

    out = tmp_path / "out"
    assert _build("openclipart", root, "--out", out, "--image-size", "16", "--heldout-fraction", "0") == 0
    samples = _samples(out, "train")
    assert len(samples) == 4
    assert all(im.size == (16, 16) for _, im, _, _ in samples)


def test_missing_openclipart_names_the_apt_line(tmp_path, capsys):
    assert _build("openclipart", tmp_path / "nowhere", "--out", tmp_path / "out") == 2
    assert "apt-get install -y openclipart-png openclipart-svg" in capsys.readouterr().err


def _idx(path: Path, array):
    import numpy as np

    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def write_fake_fashion_mnist(root: Path, n: int = 20):
    import numpy as np

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    _idx(root / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
    _idx(root / "t10k-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return root


def test_fashion_mnist_reader(tmp_path):
    root = write_fake_fashion_mnist(tmp_path / "fm", n=20)
    images, labels, classes = ds_sources.fashion_mnist("test", root)
    assert images.shape == (20, 28, 28) and labels.tolist() == [i % 10 for i in range(20)]
    assert len(classes) == 10 and classes[9] == "ankle boot"
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        ds_sources.fashion_mnist("test", tmp_path / "none")
