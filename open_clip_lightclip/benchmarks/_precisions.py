"""``bench inference --onnx-dir DIR --heldout SHARDS``: what each ONNX precision of an exported model costs.

Per precision found in the folder (fp32, fp16, int8 files written by ``export --onnx-precision``): the file size
per tower, the median latency of one call at batch 1 on onnxruntime's CPU provider, and the held-out quality
computed with onnxruntime sessions of that precision (:class:`~open_clip_lightclip.export.precision.OnnxCLIP`
through the held-out evaluator that ``ablate`` uses): retrieval = mean of image->text and text->image R@1/5/10,
zero-shot = top-1 over the held-out images' categories (and Fashion-MNIST with ``--fashion-samples``). Deltas
are in points (x100) against the fp32 ONNX files of the same folder; a precision that loses more than
``--max-drop`` points on either metric is marked WORSE and named in a line below the table.
"""
import contextlib
import io
import json
import statistics
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

__all__ = ["PRECISION_COLUMNS", "OnnxDirError", "check_onnx_dir", "measure_folder", "precision_table", "worse_lines"]

PRECISION_COLUMNS = ["folder", "precision", "image MB", "text MB", "image ms", "text ms", "retrieval",
                     "retrieval delta", "zero-shot", "zero-shot delta", "vs fp32"]


class OnnxDirError(RuntimeError):
    """A folder or held-out split that cannot be benchmarked; the message is one line."""


def check_onnx_dir(folder: str) -> List[str]:
    """The precisions whose two encoders are in ``folder`` (fp32 first); :class:`OnnxDirError` if it is not an
    ONNX export."""
    from ..export import CONFIG_NAME, PRECISIONS, precision_files

    path = Path(folder)
    if not path.is_dir():
        raise OnnxDirError(f"--onnx-dir: {folder} is not a folder; give the OUT_DIR of "
                           "`open-clip-lightclip export CKPT OUT_DIR --onnx-precision fp32 fp16 int8`")
    if not (path / CONFIG_NAME).is_file() or not all((path / n).is_file() for n in precision_files("fp32")):
        raise OnnxDirError(f"--onnx-dir: {folder} has no {CONFIG_NAME} with image_encoder.onnx and "
                           "text_encoder.onnx; export it with `open-clip-lightclip export CKPT OUT_DIR --onnx-precision "
                           "fp32 fp16 int8`")
    return [p for p in PRECISIONS if all((path / n).is_file() for n in precision_files(p))]


def _median_ms(fn, repeats: int, warmup: int) -> float:
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        fn()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _scores(metrics: dict) -> Dict[str, float]:
    recalls = [v for k, v in metrics.items() if "_R@" in k]
    zeroshot = [metrics[k] for k in ("clipart_zeroshot", "fashion_mnist_zeroshot") if k in metrics]
    return {"retrieval": 100 * sum(recalls) / len(recalls),
            "zeroshot": 100 * sum(zeroshot) / len(zeroshot) if zeroshot else float("nan")}


def measure_folder(folder: str, data: dict, threads: int = 1, repeats: int = 20, warmup: int = 3,
                   progress=None) -> List[dict]:
    """One row per precision of ``folder``: MB and batch-1 latency per tower, held-out metrics and their deltas
    (points) against the folder's fp32 encoders, and how each file was made (its ONNX metadata)."""
    import open_clip
    import torch

    from ..export import CONFIG_NAME, precision_files
    from ..export.evaluate import evaluate_model
    from ..export.precision import OnnxCLIP, eval_transform, read_metadata

    precisions = check_onnx_dir(folder)
    cfg = json.loads((Path(folder) / CONFIG_NAME).read_text())
    model_cfg = cfg.get("model_cfg", cfg)
    transform = eval_transform(model_cfg["vision_cfg"].get("image_size", 224), cfg.get("preprocess_cfg"))
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    image = transform(data["images"][0]).unsqueeze(0)
    text = tokenizer(data["captions"][:1])
    rows = []
    for precision in precisions:
        model = OnnxCLIP(folder, precision, threads=threads)
        paths = [Path(folder) / n for n in precision_files(precision)]
        row = {"folder": str(folder), "precision": precision,
               "image_mb": paths[0].stat().st_size / 1e6, "text_mb": paths[1].stat().st_size / 1e6,
               "image_ms": _median_ms(lambda: model.encode_image(image), repeats, warmup),
               "text_ms": _median_ms(lambda: model.encode_text(text), repeats, warmup),
               "image_method": read_metadata(paths[0]) or precision, "text_method": read_metadata(paths[1]) or precision}
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # clip_benchmark's tqdm bars
            row["metrics"] = evaluate_model(model, transform, tokenizer, data)
        row.update(_scores(row["metrics"]))
        rows.append(row)
        if progress is not None:
            progress(f"{folder} {precision}: {row['retrieval']:.2f} retrieval, {row['zeroshot']:.2f} zero-shot")
    ref = rows[0]  # fp32
    for row in rows:
        row["retrieval_delta"] = row["retrieval"] - ref["retrieval"]
        row["zeroshot_delta"] = row["zeroshot"] - ref["zeroshot"]
    return rows


def _is_worse(row: dict, max_drop: float) -> bool:
    return row["retrieval_delta"] < -max_drop or row["zeroshot_delta"] < -max_drop


def precision_table(rows: Sequence[dict], max_drop: float = 1.0) -> str:
    """Markdown table of :func:`measure_folder` rows; deltas in points vs the folder's fp32."""
    lines = ["| " + " | ".join(PRECISION_COLUMNS) + " |", "|" + "|".join("---" for _ in PRECISION_COLUMNS) + "|"]
    for r in rows:
        verdict = "reference" if r["precision"] == "fp32" else (
            f"WORSE (> {max_drop:g} pt)" if _is_worse(r, max_drop) else f"ok (<= {max_drop:g} pt)")
        cells = [r["folder"], r["precision"], f"{r['image_mb']:.2f}", f"{r['text_mb']:.2f}", f"{r['image_ms']:.2f}",
                 f"{r['text_ms']:.2f}", f"{r['retrieval']:.2f}", f"{r['retrieval_delta']:+.2f}",
                 f"{r['zeroshot']:.2f}", f"{r['zeroshot_delta']:+.2f}", verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def worse_lines(rows: Sequence[dict], max_drop: float = 1.0) -> List[str]:
    """One line per precision that loses more than ``max_drop`` points on retrieval or zero-shot."""
    out = []
    for r in rows:
        if r["precision"] != "fp32" and _is_worse(r, max_drop):
            lost = [f"{name} {r[key]:+.2f} points" for name, key in (("retrieval", "retrieval_delta"),
                                                                     ("zero-shot top-1", "zeroshot_delta"))
                    if r[key] < -max_drop]
            out.append(f"WORSE: {r['folder']} {r['precision']} loses more than {max_drop:g} point vs fp32 ONNX: "
                       + ", ".join(lost))
    return out


def run_precisions(folders: Sequence[str], heldout: str, fashion_samples: int = 0, threads: int = 1,
                   repeats: int = 20, warmup: int = 3, max_drop: float = 1.0, json_path: Optional[str] = None) -> int:
    """The ``--onnx-dir`` mode of ``bench inference``: prints the table, the WORSE lines and how each file was made."""
    import platform
    import sys

    import torch

    from ..export.evaluate import load_eval_data
    from ._progress import Progress

    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("error: --onnx-dir needs onnxruntime: pip install onnx onnxruntime (or: pip install -e '.[onnx]' in a "
              "checkout)", file=sys.stderr)
        return 1
    try:
        for folder in folders:
            check_onnx_dir(folder)
        files = _heldout_files(heldout)
    except OnnxDirError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if threads:
        torch.set_num_threads(threads)
    progress = Progress("bench inference")
    try:
        data = load_eval_data(heldout, fashion_samples=fashion_samples)
    except (OSError, ValueError) as e:
        what = "--fashion-samples: Fashion-MNIST" if fashion_samples and "fashion" in str(e).lower() else "--heldout"
        print(f"error: {what}: cannot read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
              "apt-get install dataset-fashion-mnist, or rebuild the held-out shards", file=sys.stderr)
        return 2
    if not data["images"]:
        print(f"error: --heldout: no captioned images in {heldout}; give shards written by "
              "`open-clip-lightclip build-shards`", file=sys.stderr)
        return 2
    progress(f"held-out: {len(data['images'])} images from {len(files)} shard(s), "
             f"{len(data['classes'])} zero-shot classes" + (f", {fashion_samples} Fashion-MNIST" if "fashion" in data else ""))
    rows = []
    for folder in folders:
        rows += measure_folder(folder, data, threads, repeats, warmup, progress)
    first = rows[0]["metrics"]
    zs = f"top-1 on clip-art categories ({first.get('clipart_classes', 0)} classes, {first.get('clipart_images', 0)} images)"
    if "fashion_mnist_zeroshot" in first:
        zs = f"mean {zs.replace('on ', 'of ', 1)} and Fashion-MNIST ({first['fashion_mnist_images']} images)"
    cpu = platform.processor() or platform.machine()
    shown = f"{threads} thread(s)" if threads else "default threads"
    print(f"ONNX precisions (onnxruntime {_ort_version()} CPU provider, {shown}, {cpu}; latency: median of "
          f"{repeats} calls at batch 1; held-out {heldout}: {len(data['images'])} images; retrieval = mean of "
          f"image->text and text->image R@1/5/10, zero-shot = {zs}; in points, deltas vs the folder's "
          f"fp32 ONNX)\n")
    print(precision_table(rows, max_drop))
    print()
    for line in worse_lines(rows, max_drop) or [f"no precision loses more than {max_drop:g} point vs fp32 ONNX"]:
        print(line)
    print()
    for r in rows:
        if r["precision"] != "fp32":
            print(f"{r['folder']} {r['precision']}: image tower {r['image_method']}; text tower {r['text_method']}")
    if json_path:
        Path(json_path).write_text(json.dumps(rows, indent=1))
    return 0


def _heldout_files(pattern: str) -> List[str]:
    import tarfile

    import braceexpand

    urls = list(braceexpand.braceexpand(pattern))
    for url in urls:
        if not Path(url).is_file() or not tarfile.is_tarfile(url):
            raise OnnxDirError(f"--heldout: {url} is not a tar file; give held-out webdataset shards, e.g. "
                               "'shards/heldout-00000.tar'")
    return urls


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
