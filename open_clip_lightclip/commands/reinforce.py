"""``open-clip-lightclip reinforce``: MobileCLIP's dataset reinforcement for any webdataset shards: K stored
augmentations per image, the teachers' embeddings of each view and caption, synthetic captions from a CoCa
captioner (for ``--distill-reinforced``)."""
import argparse
import sys

EPILOG = """\
Each output sample is the input sample plus paug.npy (the K augmentations' choices), timg.npy / ttxt.npy
(the teachers' unit-norm embeddings of each view and of the real and synthetic captions, in --dtype) and
syn.json (the synthetic captions); OUT/reinforce.json records how they were made and the bytes each
sample gained. Resumable (finished shards are kept, a rerun does the rest; the same --seed gives the same
shards); never overwrites.

The augmentation is OpenCLIP's train transform with the trainer's --aug-cfg keys (scale,
color_jitter, color_jitter_prob, gray_scale_prob); training replays the stored views whatever its own
--aug-cfg says. Synthetic captions: nucleus sampling (--top-p, --temperature, --min-tokens, --max-tokens).

example:
  open-clip-lightclip reinforce 'shards/clipart/train-{00000..00003}.tar' --out shards/clipart-dr \\
      --teacher LightCLIP-MNv3-S=logs/teacher/checkpoints/epoch_30.pt --views 10 \\
      --captioner coca_ViT-L-14=mscoco_finetuned_laion2b_s13b_b90k --synthetic 5
  python -m open_clip_train.main --model LightCLIP-Tiny --loss clip --distill-reinforced \\
      --train-data 'shards/clipart-dr/train-{00000..00003}.tar' --dataset-type webdataset ...
"""

_MODELS = {}  # per worker process: the teachers and the captioner, built once


def _build(opts: dict):
    from ..models.captioner import build_captioner
    from ..models.teachers import build_teacher

    key = repr(sorted(opts.items()))
    if key not in _MODELS:
        import torch

        if opts["threads"] > 0:
            torch.set_num_threads(opts["threads"])
        teachers = [build_teacher(s, device=opts["device"], precision=opts["precision"]) for s in opts["teachers"]]
        captioner = build_captioner(opts["captioner"], device=opts["device"], precision=opts["precision"]) \
            if opts["captioner"] else None
        _MODELS[key] = (teachers, captioner)
    return _MODELS[key]


def _shard_job(job):
    """One shard in a worker process."""
    from ..data.augment import AugmentSpec
    from ..data.reinforced import reinforce_shard
    from ..models.captioner import DecodeSettings

    (src, name, tmp), opts = job
    teachers, captioner = _build(opts)
    return reinforce_shard(src, name, tmp, teachers, AugmentSpec.from_dict(opts["spec"]), opts["views"], captioner,
                           opts["synthetic"], DecodeSettings(**opts["decode"]), opts["dtype"], opts["seed"],
                           opts["batch_size"])


def _spec(aug_cfg: dict):
    from ..data.augment import AugmentSpec

    if "ratio" in aug_cfg:  # OpenCLIP 3.3's own transform leaves it to timm: its crops keep (3/4, 4/3)
        raise ValueError("--aug-cfg ratio: OpenCLIP's train transform ignores it (its crops keep aspect ratios "
                         "3/4 to 4/3), so views drawn with it would differ from the trainer's; drop ratio")
    known = {"scale", "color_jitter", "color_jitter_prob", "gray_scale_prob"}
    unknown = sorted(set(aug_cfg) - known)
    if unknown:
        raise ValueError(f"--aug-cfg {unknown[0]}: stored augmentations replay OpenCLIP's own train transform "
                         f"({', '.join(sorted(known))}); drop {unknown[0]}")
    values = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in aug_cfg.items()}
    if values.get("color_jitter_prob") and (not isinstance(values.get("color_jitter"), tuple)
                                            or len(values["color_jitter"]) != 4):
        raise ValueError("--aug-cfg color_jitter_prob needs color_jitter=(brightness,contrast,saturation,hue)")
    return AugmentSpec(**values)


def _cmd_reinforce(args: argparse.Namespace) -> int:
    import time

    from tqdm import tqdm

    from ..data.derived import count_samples, source_shards
    from ..data.reinforced import ReinforceError, reinforce_shards
    from ..models.captioner import DecodeSettings
    from ..models.teachers import TeacherError

    try:
        sources = source_shards(args.shards)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.synthetic and not args.captioner:
        print("error: --synthetic needs --captioner (an OpenCLIP CoCa model and its weights)", file=sys.stderr)
        return 2
    try:
        spec = _spec(args.aug_cfg or {})
        decode = DecodeSettings(top_p=args.top_p, temperature=args.temperature, min_tokens=args.min_tokens,
                                max_tokens=args.max_tokens)
        opts = dict(teachers=list(args.teacher or []), captioner=args.captioner if args.synthetic else None,
                    device=args.device, precision=args.precision, threads=args.threads, spec=spec.to_dict(),
                    views=args.views, synthetic=args.synthetic, decode=decode.to_dict(), dtype=args.dtype,
                    seed=args.seed, batch_size=args.batch_size)
        teachers, captioner = _build(opts)  # here first: a bad teacher or captioner stops before any work
        total = None if args.no_progress else count_samples(sources)
        started = time.time()
        with tqdm(total=total, unit="sample", desc="reinforce", disable=args.no_progress) as bar:
            map_shards = None
            if args.workers > 1:
                import multiprocessing as mp

                pool = mp.get_context("spawn").Pool(args.workers)

                def map_shards(jobs):
                    for count, added in pool.imap(_shard_job, [(job, opts) for job in jobs]):
                        bar.update(count)
                        yield count, added
            try:
                info = reinforce_shards(sources, args.out, teachers, spec, args.views, captioner, args.synthetic,
                                        decode, args.dtype, args.seed, args.batch_size, progress=bar.update,
                                        map_shards=map_shards, precision=args.precision)
            finally:
                if args.workers > 1:
                    pool.terminate()
    except (TeacherError, ReinforceError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = sum(info["shards"].values())
    dims = "+".join(str(t["dim"]) for t in info["teachers"])
    teachers = f"{dims}-d teacher embeddings ({info['dtype']})" if dims else "no teacher embeddings"
    print(f"[reinforce] {n} samples in {len(info['shards'])} shards in {args.out}: {info['views']} views, "
          f"{teachers}, {info['synthetic']} synthetic captions; "
          f"{info['bytes_per_sample']:.0f} bytes added per sample; {time.time() - started:.0f} s")
    return 0


DTYPES = ("fp16", "bf16", "fp32")  # data.reinforced.DTYPES, named here: --help imports no torch


def register(sub) -> None:
    p = sub.add_parser("reinforce", help="store augmentations, teacher embeddings and synthetic captions in shards "
                                         "(for --distill-reinforced)",
                       description=(__doc__ or "").strip(), epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shards", help="input shards: a brace pattern, '::' between several")
    p.add_argument("--out", required=True, help="output folder (new, or a reinforcement of the same settings to resume)")
    p.add_argument("--teacher", nargs="+", default=None, metavar="MODEL=WEIGHTS",
                   help="teacher(s), as the trainer's --distill-teacher (none: augmentations and captions only)")
    p.add_argument("--views", type=int, default=10, metavar="K", help="stored augmentations per image (10)")
    p.add_argument("--aug-cfg", nargs="*", default=None, metavar="KEY=VALUE",
                   action=_parse_kwargs(), help="the augmentation, as the trainer's --aug-cfg (default: OpenCLIP's, "
                                                "crop scale 0.9-1)")
    p.add_argument("--captioner", default=None, metavar="MODEL=WEIGHTS",
                   help="an OpenCLIP CoCa model and its weights, e.g. coca_ViT-L-14=mscoco_finetuned_laion2b_s13b_b90k")
    p.add_argument("--synthetic", type=int, default=0, metavar="N", help="synthetic captions per image (0)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling: probability mass kept (0.9)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (1.0)")
    p.add_argument("--min-tokens", type=int, default=5, help="shortest caption, start and end tokens included (5)")
    p.add_argument("--max-tokens", type=int, default=30, help="longest caption, start and end tokens included (30)")
    p.add_argument("--dtype", choices=DTYPES, default="fp16", help="storage of the embeddings (fp16)")
    p.add_argument("--seed", type=int, default=0, help="seed of every draw (0)")
    p.add_argument("--batch-size", type=int, default=32, help="images per teacher / captioner batch (32)")
    p.add_argument("--workers", type=int, default=1, help="processes, each writing whole shards (1)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch's default)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cpu)")
    p.add_argument("--precision", default="fp32", help="the teachers' and the captioner's precision (fp32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_reinforce)


def _parse_kwargs():
    """The trainer's ``--aug-cfg KEY=VALUE`` parser (values read as Python literals)."""
    import ast

    class ParseKwargs(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            kw = {}
            for value in values:
                key, _, raw = value.partition("=")
                try:
                    kw[key] = ast.literal_eval(raw)
                except (ValueError, SyntaxError):
                    kw[key] = str(raw)
            setattr(namespace, self.dest, kw)

    return ParseKwargs
