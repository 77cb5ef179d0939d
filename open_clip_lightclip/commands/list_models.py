"""``open-clip-lightclip list-models``."""
import argparse


def _cmd_list_models(args: argparse.Namespace) -> int:
    import open_clip

    for name in open_clip.list_models():
        if not args.plugin_only or open_clip.get_model_config(name).get("model_class"):
            print(name)
    return 0


def register(sub) -> None:
    p = sub.add_parser("list-models", help="list the model configs OpenCLIP knows")
    p.add_argument("--plugin-only", action="store_true", help="only this package's configs")
    p.set_defaults(func=_cmd_list_models)
