"""Interpreter start-up hook (run from ``open_clip_lightclip.pth``).

It imports nothing heavy: it only puts a finder on ``sys.meta_path`` that notices when
``open_clip`` or ``open_clip_train.params`` is imported and, right after that module has
executed, hands it to :mod:`open_clip_lightclip.upstream.hooks` to register the plugin.
Unrelated programs never import torch because of this package.

Set ``OPEN_CLIP_LIGHTCLIP_DISABLE=1`` to turn the plugin off (checked by the ``.pth``).
"""
import sys

# module name -> name of the function in open_clip_lightclip.upstream.hooks to call on it
_HOOKS = {
    "open_clip": "install_open_clip",
    "open_clip_train.params": "install_params",
    "clip_benchmark.metrics.zeroshot_classification": "install_clip_benchmark_zeroshot",
    "open_clip_train.scheduler": "install_scheduler",
    "open_clip_train.file_utils": "install_file_utils",
    "open_clip_train.data": "install_data",
    "torch.distributed.run": "install_torchrun",
}


class _HookedLoader:
    """Wraps the real loader; runs the integration hook once the module has executed."""

    def __init__(self, loader, hook_name: str):
        self._loader = loader
        self._hook_name = hook_name

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        from open_clip_lightclip.upstream import hooks

        getattr(hooks, self._hook_name)(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _Finder:
    """A ``sys.meta_path`` finder that only answers for the modules in ``_HOOKS``."""

    def find_spec(self, fullname, path=None, target=None):
        hook_name = _HOOKS.get(fullname)
        if hook_name is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _HookedLoader(spec.loader, hook_name)
                return spec
        return None


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    # Modules imported before this hook (rare: only if the .pth ran late) are patched now.
    for name, hook_name in _HOOKS.items():
        module = sys.modules.get(name)
        if module is not None:
            from open_clip_lightclip.upstream import hooks

            getattr(hooks, hook_name)(module)


install()
