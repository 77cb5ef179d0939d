"""``open-clip-lightclip bench inference``: what an exported LightCLIP model costs at inference,
next to a plain OpenCLIP ``CLIP`` built from the same towers, measured in one run.

For each config: the LightCLIP model is exported (``export_model``: training-only modules
dropped) and reloaded through ``local-dir:``, exactly as a user would deploy it. The baseline
is upstream ``open_clip.model.CLIP`` with the same ``text_cfg`` and upstream's ``TimmModel``
on the same timm trunk. Upstream's ``timm_proj: "linear"`` crashes for MobileNetV3 (it sizes
the projection from ``num_features``), so the baseline projects with timm's own classifier
(``timm_proj: null``, a ``Linear`` with bias): the same MACs, ``embed_dim`` more parameters.

Parameters count what ``encode_image`` (``visual.*``) and ``encode_text`` (everything else but
``logit_scale`` / ``logit_bias``) use. MACs = ``torch.utils.flop_counter.FlopCounterMode`` FLOPs / 2
(matmuls and convolutions; element-wise ops are not counted). Latency: median wall time of one
call, LightCLIP and baseline calls interleaved so that load on the machine hits both alike.
"""
import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from . import sync_device
from ._progress import Progress

__all__ = ["plain_openclip_model", "exported_lightclip_model", "measure", "markdown_table", "tower_row", "tower_table",
           "run"]

COLUMNS = ["config", "encoder", "input", "params LightCLIP", "params OpenCLIP", "ratio",
           "MACs LightCLIP", "MACs OpenCLIP", "ratio", "latency LightCLIP (ms)", "latency OpenCLIP (ms)", "ratio"]


def plain_openclip_model(model_cfg: dict):
    """Upstream ``open_clip.model.CLIP`` on the same timm trunk and text tower config."""
    from open_clip.model import CLIP

    cfg = json.loads(json.dumps(model_cfg))
    cfg.pop("model_class", None)
    cfg.pop("init_logit_bias", None)
    vision = cfg["vision_cfg"]
    vision["timm_model_pretrained"] = False
    vision["timm_proj"] = None  # timm's classifier as the projection (upstream's linear proj crashes on MNv3)
    vision.pop("timm_proj_bias", None)
    return CLIP(**cfg).eval()


def exported_lightclip_model(model_name: str, work_dir: Path, checkpoint: Optional[str] = None):
    """Build (or load ``checkpoint``), export with :func:`export_model`, reload via ``local-dir:``."""
    import open_clip

    from ..export.inference import _model_cfg, export_model
    from ..models.checkpoint import read_state_dict

    state_dict = read_state_dict(checkpoint) if checkpoint else {}
    model_cfg = _model_cfg(model_name, {}, state_dict)
    model = open_clip.create_model(model_name, pretrained=checkpoint).eval()
    out = work_dir / model_name
    export_model(model, model_cfg, out)
    return open_clip.create_model(f"local-dir:{out}").eval(), model_cfg


def _split_params(model) -> Dict[str, int]:
    image = sum(p.numel() for n, p in model.named_parameters() if n.startswith("visual."))
    text = sum(p.numel() for n, p in model.named_parameters()
               if not n.startswith("visual.") and n not in ("logit_scale", "logit_bias"))
    return {"image": image, "text": text}


def _macs(fn, x) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(x)
    return counter.get_total_flops() // 2


def _inputs(model_cfg: dict, batch_size: int, device):
    import torch

    size = model_cfg["vision_cfg"].get("image_size", 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    context = model_cfg["text_cfg"].get("context_length", 77)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, h, w, generator=gen).to(device)
    texts = torch.randint(1, 49000, (batch_size, context), generator=gen)
    texts[:, 0], texts[:, -1] = 49406, 49407  # SOT ... EOT
    return {"image": images, "text": texts.to(device)}, {"image": f"{batch_size}x3x{h}x{w}",
                                                       "text": f"{batch_size}x{context} tokens"}


def measure(light, plain, model_cfg: dict, batch_size: int = 1, repeats: int = 20, warmup: int = 3,
            device="cpu") -> List[dict]:
    """Rows (one per encoder) of params / MACs / median latency for both models."""
    import torch

    inputs, shapes = _inputs(model_cfg, batch_size, device)
    light_params, plain_params = _split_params(light), _split_params(plain)
    rows = []
    for encoder in ("image", "text"):
        fns = {"light": getattr(light, f"encode_{encoder}"), "plain": getattr(plain, f"encode_{encoder}")}
        x = inputs[encoder]
        row = {"encoder": encoder, "input": shapes[encoder],
               "params": {"light": light_params[encoder], "plain": plain_params[encoder]},
               "macs": {k: _macs(fn, x) for k, fn in fns.items()}}
        times = {"light": [], "plain": []}
        with torch.no_grad():
            for i in range(warmup + repeats):
                for k in (("light", "plain") if i % 2 == 0 else ("plain", "light")):
                    sync_device(device)
                    t0 = time.perf_counter()
                    fns[k](x)
                    sync_device(device)
                    if i >= warmup:
                        times[k].append(time.perf_counter() - t0)
        row["latency_ms"] = {k: 1000 * statistics.median(v) for k, v in times.items()}
        rows.append(row)
    return rows


def _fmt_count(n: float, unit: str) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g} {suffix}{unit}".rstrip()
    return f"{n:g} {unit}".rstrip()


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}x" if b else "n/a"


def markdown_table(results: Dict[str, List[dict]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for name, rows in results.items():
        for r in rows:
            p, m, t = r["params"], r["macs"], r["latency_ms"]
            cells = [name, r["encoder"], r["input"],
                     _fmt_count(p["light"], ""), _fmt_count(p["plain"], ""), _ratio(p["light"], p["plain"]),
                     _fmt_count(m["light"], ""), _fmt_count(m["plain"], ""), _ratio(m["light"], m["plain"]),
                     f"{t['light']:.2f}", f"{t['plain']:.2f}", _ratio(t["light"], t["plain"])]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


TOWER_COLUMNS = ["config", "image trunk", "input", "params", "params fused", "MACs", "MACs fused",
                 "latency (ms)", "latency fused (ms)", "ONNX Runtime (ms)"]


def _median_ms(fn, x, repeats: int, warmup: int) -> float:
    import torch

    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            fn(x)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def tower_row(name: str, work_dir: Path, batch_size: int = 1, repeats: int = 20, warmup: int = 3) -> dict:
    """The image encoder of one config as deployed: parameters, MACs and CPU latency before and after fusing a
    reparameterisable tower (``export``'s fusion), and the fused model's ONNX Runtime latency (n/a without
    onnx / onnxruntime)."""
    import copy

    import open_clip
    import torch

    from ..export.inference import export_onnx

    model = open_clip.create_model(name).eval()
    cfg = open_clip.get_model_config(name)
    inputs, shapes = _inputs(cfg, batch_size, "cpu")
    x = inputs["image"]
    fused = copy.deepcopy(model)
    fusable = fused.visual.reparameterize()
    row = {"config": name, "trunk": cfg["vision_cfg"]["timm_model_name"], "input": shapes["image"],
           "params": _split_params(model)["image"], "params_fused": _split_params(fused)["image"] if fusable else None,
           "macs": _macs(model.encode_image, x), "macs_fused": _macs(fused.encode_image, x) if fusable else None}
    row["latency_ms"] = _median_ms(model.encode_image, x, repeats, warmup)
    row["latency_fused_ms"] = _median_ms(fused.encode_image, x, repeats, warmup) if fusable else None
    row["onnx_ms"] = None
    try:
        import onnxruntime as ort

        out = work_dir / name
        out.mkdir(parents=True, exist_ok=True)
        export_onnx(fused, out, cfg["text_cfg"].get("context_length", 77), verify=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        session = ort.InferenceSession(str(out / "image_encoder.onnx"), options, providers=["CPUExecutionProvider"])
        row["onnx_ms"] = _median_ms(lambda a: session.run(None, {"image": a}), x.numpy(), repeats, warmup)
    except ImportError:
        pass
    return row


def tower_table(rows: List[dict]) -> str:
    def opt(v, fmt):
        return "same" if v is None else fmt(v)

    lines = ["| " + " | ".join(TOWER_COLUMNS) + " |", "|" + "|".join("---" for _ in TOWER_COLUMNS) + "|"]
    for r in rows:
        cells = [r["config"], f"`{r['trunk']}`", r["input"], _fmt_count(r["params"], ""),
                 opt(r["params_fused"], lambda v: _fmt_count(v, "")), _fmt_count(r["macs"], ""),
                 opt(r["macs_fused"], lambda v: _fmt_count(v, "")), f"{r['latency_ms']:.2f}",
                 opt(r["latency_fused_ms"], lambda v: f"{v:.2f}"),
                 "n/a" if r["onnx_ms"] is None else f"{r['onnx_ms']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _seconds_left(elapsed: float, done: int, total: int) -> Optional[float]:
    """The configs left at the mean time of those done (None before the first)."""
    return elapsed / done * (total - done) if done else None


def run(args: argparse.Namespace) -> int:
    import torch
    import open_clip

    if args.onnx_dir or args.heldout:
        return _run_onnx_dirs(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = args.models
    if not names:
        names = [n for n in open_clip.list_models() if open_clip.get_model_config(n).get("model_class")]
    unknown = [n for n in names if open_clip.get_model_config(n) is None]
    if unknown:
        print(f"error: unknown model config {unknown[0]!r}; see `open-clip-lightclip list-models`", file=sys.stderr)
        return 1
    if args.towers and device.type != "cpu":
        print("error: --towers measures CPU latency (and ONNX Runtime's CPU provider); drop --device", file=sys.stderr)
        return 2
    cpu = platform.processor() or platform.machine()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {cpu}, threads: {torch.get_num_threads()}"
    results = {}
    progress = Progress("bench inference")  # stderr: the table on stdout can be redirected on its own
    with tempfile.TemporaryDirectory(prefix="lightclip-bench-") as tmp:
        for index, name in enumerate(names):
            torch.manual_seed(0)
            progress(f"{index + 1}/{len(names)} {name}: {args.repeats} timed calls each",
                     _seconds_left(progress.elapsed(), index, len(names)))
            start = time.perf_counter()
            if args.towers:
                results[name] = tower_row(name, Path(tmp), args.batch_size, args.repeats, args.warmup)
            else:
                light, model_cfg = exported_lightclip_model(name, Path(tmp))
                plain = plain_openclip_model(model_cfg)
                light, plain = light.to(device), plain.to(device)
                results[name] = measure(light, plain, model_cfg, args.batch_size, args.repeats, args.warmup, device)
            progress(f"{index + 1}/{len(names)} {name} done in {time.perf_counter() - start:.1f}s",
                     _seconds_left(progress.elapsed(), index + 1, len(names)))
    setup = f"batch {args.batch_size}, {where}, torch {torch.__version__}, median of {args.repeats}"
    if args.towers:
        print(f"Image encoders as deployed ({setup}; fused = `export`'s reparameterisation, \"same\" where the tower "
              f"has nothing to fuse; ONNX of the fused model)\n")
        print(tower_table(list(results.values())))
    else:
        print(f"Inference cost, exported LightCLIP model vs plain OpenCLIP CLIP on the same towers ({setup}; "
              f"ratio = LightCLIP / OpenCLIP)\n")
        print(markdown_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def _run_onnx_dirs(args: argparse.Namespace) -> int:
    from ._precisions import run_precisions

    if not (args.onnx_dir and args.heldout):
        print("error: --onnx-dir and --heldout go together: bench inference --onnx-dir OUT_DIR --heldout "
              "'shards/heldout-00000.tar'", file=sys.stderr)
        return 2
    if args.towers or args.models or args.device != "cpu":
        print("error: --onnx-dir measures the exported ONNX files on onnxruntime's CPU provider: drop --towers, "
              "--models and --device", file=sys.stderr)
        return 2
    return run_precisions(args.onnx_dir, args.heldout, fashion_samples=args.fashion_samples, threads=args.threads,
                          repeats=args.repeats, warmup=args.warmup, max_drop=args.max_drop, json_path=args.json)


def register(sub) -> None:
    from ._args import at_least, device, new_file

    p = sub.add_parser(
        "inference", help="params, MACs and latency of encode_image / encode_text: exported LightCLIP vs "
                          "plain OpenCLIP CLIP on the same towers",
        description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=None, metavar="NAME",
                   help="model configs (default: every LightCLIP config)")
    p.add_argument("--batch-size", type=at_least(1), default=1, help="batch size of the timed calls (default: 1)")
    p.add_argument("--repeats", type=at_least(1), default=20, help="timed calls per encoder and model (default: 20)")
    p.add_argument("--warmup", type=at_least(0), default=3, help="untimed calls first (default: 3)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default: 1, the usual single-core edge-latency setting, and stable "
                        "on a shared machine; 0 = torch's default)")
    p.add_argument("--device", type=device, default="cpu", help="device (default: cpu)")
    p.add_argument("--towers", action="store_true",
                   help="instead: the image encoder of each config as deployed: params, MACs and CPU latency before "
                        "and after reparameterisation, and ONNX Runtime latency")
    p.add_argument("--onnx-dir", nargs="+", metavar="DIR", default=None,
                   help="instead: each ONNX precision (fp32 / fp16 / int8 files of `export --onnx-precision`) of these "
                        "export folders: MB and batch-1 onnxruntime CPU latency per tower, and the held-out retrieval "
                        "(mean R@1/5/10, both directions) and zero-shot top-1 computed with that precision, as deltas "
                        "in points vs the folder's fp32 ONNX; needs --heldout")
    p.add_argument("--heldout", metavar="SHARDS", default=None,
                   help="with --onnx-dir: held-out webdataset shards (brace pattern, e.g. 'shards/heldout-00000.tar'); "
                        "zero-shot classes are the categories with >= 3 images")
    p.add_argument("--fashion-samples", type=at_least(0), default=0, metavar="N",
                   help="with --onnx-dir: also zero-shot on the first N Fashion-MNIST test images (Debian "
                        "dataset-fashion-mnist; default: 0); the zero-shot column is then the mean of both")
    p.add_argument("--max-drop", type=float, default=1.0, metavar="POINTS",
                   help="with --onnx-dir: a precision losing more than this many points of retrieval or zero-shot "
                        "vs fp32 is marked WORSE (default: 1.0)")
    p.add_argument("--json", metavar="FILE", type=new_file, help="also write the measurements as JSON")
    p.set_defaults(func=run)
