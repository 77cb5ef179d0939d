"""``open-clip-lightclip build-benchmark``: a local dataset for ``clip_benchmark eval --dataset wds/NAME``."""
import argparse
import sys
from pathlib import Path


def _read_lines(path) -> list:
    from ..data.benchmark_sets import BenchmarkDataError

    path = Path(path)
    if not path.is_file():
        raise BenchmarkDataError(f"{path}: no such file")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _cmd_build_benchmark(args: argparse.Namespace) -> int:
    from ..data import benchmark_sets as bd

    try:
        if args.captions:
            samples = bd.retrieval_from_captions(args.images, args.captions)
            n = bd.write_retrieval(args.out_dir, samples, split=args.split,
                                   samples_per_shard=args.samples_per_shard, force=args.force)
            task = "zeroshot_retrieval"
        else:
            classnames = _read_lines(args.classnames) if args.classnames else None
            if args.labels:
                samples, classnames = bd.classification_from_labels(args.images, args.labels, classnames)
            else:
                samples, found = bd.classification_from_folder(args.images)
                classnames = classnames or found
                if len(classnames) != len(found):
                    raise bd.BenchmarkDataError(
                        f"{args.classnames}: {len(classnames)} class names for {len(found)} class folders")
            templates = _read_lines(args.templates) if args.templates else bd.DEFAULT_TEMPLATES
            n = bd.write_classification(args.out_dir, samples, classnames, templates, split=args.split,
                                        samples_per_shard=args.samples_per_shard, force=args.force)
            task = "zeroshot_classification"
    except (bd.BenchmarkDataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = Path(args.out_dir)
    print(f"wrote {n} samples to {out / args.split} ({task})")
    print(f"run: clip_benchmark eval --model MODEL --pretrained CHECKPOINT --dataset wds/{out.name} "
          f"--dataset_root {out} --task {task} --split {args.split}" if args.split != "test" else
          f"run: clip_benchmark eval --model MODEL --pretrained CHECKPOINT --dataset wds/{out.name} "
          f"--dataset_root {out} --task {task}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "build-benchmark",
        help="write a local clip_benchmark dataset (webdataset layout) from an image folder + labels, "
             "or from image + caption pairs",
        description="Write OUT_DIR in the layout `clip_benchmark eval --dataset wds/NAME --dataset_root OUT_DIR` "
                    "reads: zero-shot classification from IMAGES/CLASS/*.png (or --labels), zero-shot "
                    "retrieval from --captions.")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output dataset folder")
    p.add_argument("--images", required=True, metavar="DIR",
                   help="image folder: class subfolders (classification), or the root of the paths in --labels / "
                        "--captions")
    p.add_argument("--labels", metavar="FILE",
                   help="classification labels, one 'IMAGE<TAB>CLASS' per line (.csv: 'IMAGE,CLASS'); "
                        "paths relative to --images")
    p.add_argument("--captions", metavar="FILE",
                   help="retrieval: one 'IMAGE<TAB>CAPTION' per line (.csv: 'IMAGE,CAPTION'); an image may have "
                        "several lines; paths relative to --images")
    p.add_argument("--classnames", metavar="FILE",
                   help="class names, one per line, in label order (default: sorted folder / label names)")
    p.add_argument("--templates", metavar="FILE",
                   help="zero-shot prompts, one per line, with {c} for the class name (default: 6 CLIP prompts)")
    p.add_argument("--split", default="test", help="split folder name (clip_benchmark's --split; default: test)")
    p.add_argument("--samples-per-shard", type=int, default=10_000, help="samples per tar shard")
    p.add_argument("--force", action="store_true",
                   help="replace the split build-benchmark wrote here before, and write into a folder holding other "
                        "files (beside them: a file it did not write is never overwritten or deleted)")
    p.set_defaults(func=_cmd_build_benchmark)
