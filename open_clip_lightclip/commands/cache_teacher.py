"""``open-clip-lightclip cache-teacher``: teacher embeddings stored in the shards, once, for ``--distill-cache``."""
import argparse
import sys

EPILOG = """\
Each output sample is the input sample plus teacher.npy (float32 (2, D): the unit-norm image and text
embeddings, the teachers' widths concatenated); OUT/teacher_cache.json names the teachers and the
finished shards. Resumable (finished shards are kept, a rerun does the rest); never overwrites.

The teacher sees each raw image through its own inference transform (not the student's augmented
view, which the online teacher judges) and the raw caption with its own tokenizer.

example:
  open-clip-lightclip cache-teacher 'shards/clipart/train-{00000..00003}.tar' --out shards/clipart-teacher \\
      --teacher LightCLIP-MNv3-S=logs/teacher/checkpoints/epoch_30.pt
  python -m open_clip_train.main --model LightCLIP-Tiny --loss clip --distill-cache \\
      --train-data 'shards/clipart-teacher/train-{00000..00003}.tar' --dataset-type webdataset ...
"""


def _cmd_cache_teacher(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..data.derived import count_samples, source_shards
    from ..data.teacher_cache import CacheError, cache_teacher_shards
    from ..models.teachers import TeacherError, build_teacher

    try:
        sources = source_shards(args.shards)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        teachers = [build_teacher(spec, device=args.device, precision=args.precision) for spec in args.teacher]
        total = None if args.no_progress else count_samples(sources)
        with tqdm(total=total, unit="sample", desc="cache-teacher", disable=args.no_progress) as bar:
            info = cache_teacher_shards(sources, args.out, teachers, batch_size=args.batch_size, progress=bar.update)
    except (TeacherError, CacheError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = sum(info["shards"].values())
    dims = "+".join(str(t["dim"]) for t in info["teachers"])
    print(f"[cache-teacher] {n} samples in {len(info['shards'])} shards with {dims}-d teacher embeddings in {args.out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("cache-teacher", help="store teacher embeddings in webdataset shards (for --distill-cache)",
                       description=(__doc__ or "").strip(), epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shards", help="input shards: a brace pattern, '::' between several")
    p.add_argument("--out", required=True, help="output folder (new, or a cache of the same teachers to resume)")
    p.add_argument("--teacher", nargs="+", required=True, metavar="MODEL=WEIGHTS",
                   help="teacher(s), as the trainer's --distill-teacher")
    p.add_argument("--batch-size", type=int, default=64, help="teacher batch size (64)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cpu)")
    p.add_argument("--precision", default="fp32", help="the teacher's precision, as the trainer's --precision (fp32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_cache_teacher)
