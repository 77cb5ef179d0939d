"""Registration through OpenCLIP's own plugin API, for an OpenCLIP with the hooks of ``patches/``.

Such an OpenCLIP runs the ``open_clip.plugins`` entry points of installed packages when it is
imported; this package's entry point is :func:`register`. It adds the model configs, the model
classes, the training-only module names, the ``--loss`` objectives and distillation (a train hook for
every ``--loss``) through the functions the diff adds (``add_model_config``, ``register_model_class``,
``register_training_only_module``, ``register_loss``, ``register_train_hook``), and makes the objectives
read upstream's training progress. Nothing of OpenCLIP is patched on that route: :mod:`.hooks` leaves an
OpenCLIP with the hooks alone.
"""
import os

__all__ = ["register"]


def register() -> None:
    """The ``open_clip.plugins`` entry point (``OPEN_CLIP_LIGHTCLIP_DISABLE=1`` turns it off too)."""
    if os.environ.get("OPEN_CLIP_LIGHTCLIP_DISABLE", "0").lower() in ("1", "true", "yes"):
        return
    import open_clip

    from .hooks import _supported, announced, model_configs_dir, upstream_has_hooks

    if not upstream_has_hooks(open_clip):
        return  # a pristine OpenCLIP: the start-up hook patches it instead (hooks.py)
    from ..losses import get_loss_entry, list_losses
    from ..losses.progress import PROGRESS
    from ..models import TRAINING_ONLY_MODULES, get_model_class, list_model_classes
    if not _supported(open_clip):  # one warning; OpenCLIP works without the plugin
        return
    open_clip.add_model_config(model_configs_dir())
    for name in list_model_classes():
        open_clip.register_model_class(name, get_model_class(name))
    for name in TRAINING_ONLY_MODULES:
        open_clip.register_training_only_module(name)
    for name in list_losses():
        if name not in open_clip.list_losses():  # upstream's own clip / siglip stay
            entry = get_loss_entry(name)
            open_clip.register_loss(name, announced(name, entry.factory), add_args=entry.add_args, check_args=entry.check_args,
                                    configure_model=entry.configure_model)
    from .distill import register_train_hook

    register_train_hook(open_clip)  # distillation with every --loss
    try:
        from open_clip_train import scheduler
    except ImportError:  # inference-only install: no trainer, no progress to follow
        return
    PROGRESS.follow(scheduler.PROGRESS)
