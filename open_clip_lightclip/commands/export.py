"""``open-clip-lightclip export CKPT OUT_DIR``: an inference-only model in OpenCLIP's hub layout."""
import argparse
import sys


def _cmd_export(args: argparse.Namespace) -> int:
    from ..export import PRECISIONS, export_checkpoint, main_error

    bad = [p for p in args.onnx_precision if p not in PRECISIONS]
    if bad:
        print(f"error: --onnx-precision: unknown {', '.join(map(repr, bad))}; choose from {' '.join(PRECISIONS)}",
              file=sys.stderr)
        return 2
    onnx = args.onnx or any(p != "fp32" for p in args.onnx_precision)
    try:
        export_checkpoint(args.checkpoint, args.out_dir, model_name=args.model, onnx=onnx,
                          onnx_precision=args.onnx_precision, force=args.force,
                          plugin_format=args.plugin_format, license=args.license, push_repo=args.push,
                          private=args.private, calibration_data=args.calibration_data,
                          calibration_samples=args.calibration_samples, int8_image=args.int8_image)
    except Exception as e:  # one line naming the file and the problem
        print(f"error: {main_error(e)}", file=sys.stderr)
        return 1
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="export a trainer checkpoint as a stock OpenCLIP model (open_clip_config.json + "
                       "open_clip_model.safetensors, loadable with 'local-dir:OUT_DIR' without this plugin), "
                       "optionally ONNX",
        description="Write an inference-only copy of a trainer checkpoint (training-only modules dropped) "
                    "in the layout OpenCLIP's local-dir: / hf-hub: loaders read. By default it is a stock "
                    "OpenCLIP model (no model_class: the timm trunk's own classifier holds the projection), "
                    "checked by loading it in a fresh interpreter with the plugin off "
                    "(OPEN_CLIP_LIGHTCLIP_DISABLE=1) against the checkpoint's embeddings (max |diff| <= 1e-5). "
                    "Reparameterisable towers (MobileOne, FastViT-MCi, RepViT) are written unfused, since "
                    "upstream has no fused form; --onnx writes them fused. Prints parameter counts before "
                    "and after. Files are world-readable (0644); OUT_DIR may hold only files an earlier "
                    "export wrote (listed in .open-clip-lightclip-files.json).")
    p.add_argument("checkpoint", metavar="CKPT", help="trainer checkpoint (epoch_N.pt), state_dict or .safetensors")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder (must be new or empty unless --force)")
    p.add_argument("--model", default=None,
                   help="model config name (default: the 'model' in the run's params.txt next to checkpoints/)")
    p.add_argument("--onnx", action="store_true",
                   help="also write image_encoder.onnx and text_encoder.onnx, checked against onnxruntime")
    p.add_argument("--onnx-precision", nargs="+", default=["fp32"], metavar="{fp32,fp16,int8}",
                   help="ONNX precisions to write (implies --onnx; default: fp32). fp16: "
                        "image_encoder.fp16.onnx / text_encoder.fp16.onnx (onnxconverter-common's float16 "
                        "conversion, else onnxruntime.transformers.float16; inputs/outputs stay fp32). int8: "
                        "image_encoder.int8.onnx / text_encoder.int8.onnx (onnxruntime quantisation: the image "
                        "tower static QDQ with --calibration-data, else dynamic; the text tower dynamic). Each file "
                        "is loaded by onnxruntime and its size in MB "
                        "and min cosine of unit-norm embeddings to fp32 PyTorch printed on held-out synthetic "
                        "shapes; a precision under 0.99 is reported as losing more than 0.01")
    p.add_argument("--calibration-data", metavar="SHARDS", default=None,
                   help="webdataset shards (brace pattern, e.g. 'shards/train-{00000..00003}.tar') whose images "
                        "calibrate the int8 image tower: static QDQ quantisation (onnxruntime quantize_static, int8 "
                        "per-channel weights, int8 activations); without it the int8 image tower is dynamic")
    p.add_argument("--calibration-samples", type=int, default=256, metavar="N",
                   help="calibration images: the first N of --calibration-data (default: 256)")
    p.add_argument("--int8-image", choices=("static", "dynamic"), default=None,
                   help="how the int8 image tower is quantised (default: static with --calibration-data, else "
                        "dynamic); the text tower is always dynamic")
    p.add_argument("--plugin-format", action="store_true",
                   help="write the plugin's own layout instead (model_class: LightCLIP, reparameterisable towers "
                        "fused); loading it needs open-clip-lightclip")
    p.add_argument("--license", default="mit", help="license in the model card's Hub metadata (default: mit)")
    p.add_argument("--push", metavar="REPO_ID", default=None,
                   help="upload the exported model to the Hugging Face Hub (open_clip.push_to_hf_hub; needs a "
                        "token: `hf auth login` or HF_TOKEN); the card goes up when the repo has no README yet")
    p.add_argument("--private", action="store_true", help="with --push: create the repo private")
    p.add_argument("--force", action="store_true",
                   help="write into OUT_DIR although it holds other files (beside them, never over them)")
    p.set_defaults(func=_cmd_export)
