"""``open-clip-lightclip build-shards``: captioned images -> OpenCLIP-ready webdataset shards."""
import argparse
import json
import os
import sys
from pathlib import Path

EPILOG = """\
sources:
  folder DIR          images with a sidecar caption: DIR/**/cat.jpg + DIR/**/cat.txt
                      (the first sub-folder is the image's category)
  csv FILE            a CSV/TSV in OpenCLIP's convention: --csv-img-key (filepath),
                      --csv-caption-key (title); separator sniffed unless --csv-separator
  openclipart [DIR]   the Debian clip-art packages (default /usr/share/openclipart):
                      apt-get install -y openclipart-png openclipart-svg
                      captions from each SVG's dc:title and keywords; icon/shape/gradient
                      folders dropped; the top-level folder is the category

output (a folder holding files build-shards did not write is refused; --force writes beside
them, never over them; the list of files it wrote is OUT/.open-clip-lightclip-files.json):
OUT/train-NNNNN.tar, OUT/heldout-NNNNN.tar, OUT/sizes.json
(so --train-num-samples is not needed) and OUT/build_info.json (counts, categories, the
--train-data / --val-data patterns). Each sample is <key>.png|jpg + <key>.txt + <key>.json.
Broken images and empty captions are skipped and counted.

example:
  open-clip-lightclip build-shards openclipart --out shards/clipart --image-size 96
  python -m open_clip_train.main --model LightCLIP-Tiny --loss clip \\
      --train-data 'shards/clipart/train-{00000..00003}.tar' --dataset-type webdataset \\
      --val-data 'shards/clipart/heldout-00000.tar' ...
"""


def _check_flags(args: argparse.Namespace) -> str:
    """One line naming a flag value build-shards cannot use, or an empty string (checked before anything runs)."""
    for flag, value in (("--image-size", args.image_size), ("--samples-per-shard", args.samples_per_shard)):
        if value < 1:
            return f"{flag} must be >= 1, got {value}"
    if not 0 <= args.heldout_fraction < 1:  # also NaN
        return (f"--heldout-fraction must be in [0, 1) (the share of samples held out), got {args.heldout_fraction}; "
                "e.g. --heldout-fraction 0.1")
    if args.max_samples < 0 or args.workers < 0:
        return f"--max-samples and --workers must be >= 0, got {args.max_samples} and {args.workers}"
    return ""


def _cmd_build_shards(args: argparse.Namespace) -> int:
    from ..data import shards, sources

    error = _check_flags(args)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    stats = sources.BuildStats()
    if args.source == "folder":
        if not args.path or not Path(args.path).is_dir():
            print(f"error: folder source needs an existing folder, got {args.path!r}", file=sys.stderr)
            return 2
        records = sources.folder_records(args.path, stats)
    elif args.source == "csv":
        if not args.path or not Path(args.path).is_file():
            print(f"error: csv source needs an existing CSV/TSV file, got {args.path!r}", file=sys.stderr)
            return 2
        records = sources.csv_records(args.path, args.csv_img_key, args.csv_caption_key, args.csv_separator,
                                 args.csv_category_key, stats)
    else:
        root = Path(args.path or sources.OPENCLIPART_ROOT)
        if not (root / "png").is_dir():
            print(f"error: {root / 'png'} not found; install the clip art with:\n"
                  f"  apt-get install -y openclipart-png openclipart-svg", file=sys.stderr)
            return 2
        records = sources.openclipart_records(root, stats)
    try:
        print(f"[build-shards] reading {args.source} {args.path or ''}".rstrip(), flush=True)
        records = list(records)
        if args.max_samples:
            records = records[:args.max_samples]
        info = shards.build_shards(
            records, args.out, image_size=args.image_size, heldout_fraction=args.heldout_fraction,
            split_seed=args.split_seed, samples_per_shard=args.samples_per_shard, image_format=args.format,
            resize=args.resize, stats=stats, progress=not args.no_progress, workers=args.workers,
            source=f"{args.source}:{args.path or ''}", force=args.force)
    except (FileExistsError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    written = info["written"]
    print(f"[build-shards] {written['train']} train + {written['heldout']} held-out samples written to {args.out}; "
          f"skipped {info['skipped_broken']} broken image(s), {info['skipped_no_caption']} without caption", flush=True)
    if info["train_data"]:
        print(f"[build-shards] --train-data '{info['train_data']}'", flush=True)
    if info["heldout_data"]:
        print(f"[build-shards] --val-data '{info['heldout_data']}'", flush=True)
    if args.json:
        print(json.dumps(info, indent=1))
    return 0 if written["train"] + written["heldout"] > 0 else 1


def register(sub) -> None:
    p = sub.add_parser(
        "build-shards", help="turn captioned images into OpenCLIP webdataset shards (train / held-out split)",
        description="Turn captioned images into OpenCLIP-ready webdataset shards, split deterministically "
                    "into train and held-out.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", choices=["folder", "csv", "openclipart"], help="kind of input")
    p.add_argument("path", nargs="?", help="folder, CSV/TSV file, or clip-art root (default /usr/share/openclipart)")
    p.add_argument("--out", required=True,
                   help="output folder: new, empty, or written by build-shards before (with --force)")
    p.add_argument("--force", action="store_true",
                   help="write into a folder holding other files (beside them, never over them) and replace the "
                        "shards build-shards wrote there before")
    p.add_argument("--image-size", type=int, default=96, help="resize every image once to this square size (96)")
    p.add_argument("--resize", choices=["pad", "crop"], default="pad",
                   help="pad: fit and pad with white (default, keeps clip art whole); crop: centre crop")
    p.add_argument("--format", choices=["png", "jpg"], default="png", help="image format in the shards (png)")
    p.add_argument("--heldout-fraction", type=float, default=0.1, help="share of samples held out (0.1)")
    p.add_argument("--split-seed", type=int, default=0,
                   help="seed of the split; a sample's side depends only on this and its key (0)")
    p.add_argument("--samples-per-shard", type=int, default=1000, help="samples per .tar (1000)")
    p.add_argument("--max-samples", type=int, default=0, help="use only the first N records (0 = all)")
    p.add_argument("--csv-img-key", default="filepath", help="CSV column of image paths (filepath)")
    p.add_argument("--csv-caption-key", default="title", help="CSV column of captions (title)")
    p.add_argument("--csv-category-key", default=None, help="optional CSV column of categories")
    p.add_argument("--csv-separator", default=None, help="CSV separator (default: tab if the header has one, else comma)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="processes decoding and resizing images (default: CPU cores, at most 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print build_info.json when done")
    p.set_defaults(func=_cmd_build_shards)
