"""The one place where upstream code is patched.

Called by the import hook in :mod:`.autoload` right after a hooked
module (``autoload._HOOKS``) has executed. It adds what upstream lacks:

* ``open_clip``: our model configs (``model_configs/``) and ``BASE+TIMM_NAME`` names (any timm backbone,
  :mod:`~open_clip_lightclip.models.timm_names`); a model class chosen by the config
  key ``"model_class"`` (upstream builds ``CLIP``); the loss's ``configure_model`` hook on the
  trainer's model whatever class builds it (``CLIP``, ``CustomTextCLIP``, ``CoCa``); a loss registry behind ``--loss``
  (upstream's ``create_loss`` when the flag is absent); checkpoint loading that ignores
  training-only modules (:mod:`.checkpoint`);
* ``open_clip_train.params``: the plugin's trainer flags and their checks; once a process parses
  trainer flags, DDP of a CPU model and atomic ``epoch_N.pt`` saves (:func:`_install_trainer_process`);
* ``open_clip_train.scheduler``: the trainer's step / total steps (:mod:`open_clip_lightclip.losses.progress`);
* ``open_clip_train.file_utils``: ``--resume`` of an unreadable file stops with one line; known input
  errors of the trainer print as one line (:mod:`.errors`);
* ``open_clip_train.data``: the training data order depends on ``--seed`` alone (paired studies); with
  ``--distill-cache`` the samples' cached teacher embeddings ride in the text field (:mod:`.distill`);
  unreadable shards and members are skipped and counted, never retried forever (:mod:`.shard_check`);
* distillation with every ``--loss`` (teachers on the trainer's model, the loss wrapped): :mod:`.distill`;
* ``clip_benchmark``: its zero-shot accuracy under NumPy 2.4;
* ``torch.distributed.run``: torchrun's parser no longer rejects ``--logs`` as ambiguous.

``patches/`` holds the OpenCLIP hooks as a diff against the pinned release; an OpenCLIP that carries
them registers the plugin itself (entry point, :mod:`.registration`) and nothing here patches it.
Every patch is idempotent and leaves upstream behaviour unchanged when unused.
"""
import argparse
import functools
import logging
import types
from pathlib import Path

SUPPORTED_OPEN_CLIP = ((3, 3), (3, 4))  # [min, max) as (major, minor)
SUPPORTED_RANGE = "open_clip_torch>=3.3,<3.4"

_PACKAGE_DIR = Path(__file__).resolve().parent.parent
_INSTALLED = set()
# The trainer's parsed args, from parse_args until the trainer's model is built: the first
# model built after parsing gets the loss's ``configure_model`` hook (a distillation
# teacher, built later, does not).
_PENDING_TRAINER_ARGS = None
_TRAINER_ARGS = None  # the trainer's parsed args (one-line errors about them, data-order seeds)


def model_configs_dir() -> Path:
    """``model_configs/`` inside the installed wheel, or at the top of a source checkout."""
    inside = _PACKAGE_DIR / "model_configs"
    return inside if inside.is_dir() else _PACKAGE_DIR.parent / "model_configs"


def check_open_clip_version(version: str) -> None:
    """Raise ImportError (one line) for an OpenCLIP release this plugin was not tested against."""
    try:
        major_minor = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        major_minor = None
    lo, hi = SUPPORTED_OPEN_CLIP
    if major_minor is None or not lo <= major_minor < hi:
        raise ImportError(
            f"open-clip-lightclip supports {SUPPORTED_RANGE}, found open_clip_torch {version}: "
            f"run `pip install '{SUPPORTED_RANGE}'` or set OPEN_CLIP_LIGHTCLIP_DISABLE=1 to turn the plugin off")


def _supported(open_clip: types.ModuleType) -> bool:
    """True for an OpenCLIP in the supported range; else one warning (once per process) and the plugin stays off:
    ``import open_clip`` and the trainer keep working as upstream's, without the plugin."""
    version = getattr(open_clip, "__version__", "unknown")
    try:
        check_open_clip_version(version)
    except ImportError:
        if "unsupported_open_clip" not in _INSTALLED:
            _INSTALLED.add("unsupported_open_clip")
            logging.getLogger("open_clip_lightclip").warning(
                f"open-clip-lightclip supports {SUPPORTED_RANGE}, found open_clip_torch {version}: the plugin is off "
                f"and OpenCLIP works without it; `pip install '{SUPPORTED_RANGE}'` turns it on "
                "(OPEN_CLIP_LIGHTCLIP_DISABLE=1 silences this warning)")
        return False
    return True


# --- open_clip -----------------------------------------------------------------------------
def _build_model(**model_cfg):
    """Stands in for ``open_clip.factory.CLIP``: builds the class named by ``model_class``."""
    name = model_cfg.pop("model_class", None)
    if name is None:
        model = _build_model.upstream_clip(**model_cfg)
    else:
        from ..models import get_model_class

        cls = get_model_class(name)
        logging.info(f"open-clip-lightclip: model_class {name!r} -> {cls.__module__}.{cls.__qualname__}")
        model = cls(**model_cfg)
    _configure_trainer_model(model)
    return model


def _configured_builder(upstream_cls):
    """Stands in for ``open_clip.factory.CustomTextCLIP`` / ``CoCa``: the upstream class, then the
    loss's ``configure_model`` hook, so every model class the trainer can build gets it."""

    @functools.wraps(upstream_cls, updated=())  # keeps __name__: the factory logs it
    def build(*args, **kwargs):
        model = upstream_cls(*args, **kwargs)
        _configure_trainer_model(model)
        return model

    build.lightclip_builder = True
    return build


def _configure_trainer_model(model) -> None:
    global _PENDING_TRAINER_ARGS
    args, _PENDING_TRAINER_ARGS = _PENDING_TRAINER_ARGS, None
    if args is None:
        return
    from ..losses import get_loss_entry

    entry = get_loss_entry(args.loss)
    if entry.configure_model is not None:
        entry.configure_model(model, args)
    from .distill import configure_model

    configure_model(model, args)
    if entry.leaves_unused is not None and entry.leaves_unused(args):
        _freeze_unused(model, args)


def _freeze_unused(model, args) -> None:
    """Freeze the trainable parameters that no term of the run's whole loss (distillation included) reaches, so
    DDP (which needs a gradient for every trainable parameter) trains without find_unused_parameters, and nothing
    untrained moves under weight decay."""
    import torch

    from ..losses import create_loss as registry_create_loss
    from ..losses.reach import unused_parameters
    from ..models.distill_heads import pack_text
    from .distill import wrap_loss

    one = argparse.Namespace(**{**vars(args), "rank": 0, "world_size": 1, "local_loss": False,
                                "gather_with_grad": False})
    outputs = getattr(model, "_distill_outputs", None)
    prepare = None
    if outputs is not None and (outputs.teachers is None or outputs.synthetic):  # the batch carries packed texts
        rows = torch.zeros(2 + outputs.synthetic, sum(outputs.dims)) if outputs.teachers is None and outputs.dims \
            else None

        def prepare(text):
            packed = [pack_text(t.cpu(), rows, t.cpu() if outputs.synthetic else None) for t in text]
            return torch.stack(packed).to(text.device)
    frozen = unused_parameters(model, wrap_loss(registry_create_loss(args.loss, one), one), prepare_text=prepare)
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    logging.info(f"{len(frozen)} parameter tensors no term uses are frozen "
                 f"({', '.join(frozen[:4])}{', ...' if len(frozen) > 4 else ''})")


def _make_create_loss(upstream_create_loss):
    @functools.wraps(upstream_create_loss)
    def create_loss(args):
        """``--loss NAME`` picks from the registry; without it, upstream's ``create_loss``."""
        name = getattr(args, "loss", None)
        if name is None:
            return upstream_create_loss(args)
        from ..losses import create_loss as registry_create_loss
        from .distill import wrap_loss

        return wrap_loss(announce_loss(name, registry_create_loss(name, args)), args)

    return create_loss


class _StepLogFields(logging.Filter):
    """Appends an objective's ``log_fields()`` (e.g. LightCLIP's ``e(t)``) to the trainer's per-step line."""

    fields = None

    def filter(self, record: logging.LogRecord) -> bool:
        if self.fields is not None and isinstance(record.msg, str) and record.msg.startswith("Train Epoch:"):
            extra = " ".join(f"{k}: {v:.4f}" for k, v in self.fields().items())
            if extra:
                record.msg = f"{record.msg} {extra}"
        return True


_STEP_LOG = _StepLogFields()


def announce_loss(name: str, loss):
    """Says at start-up what an objective trains (its ``describe()``) and puts its ``log_fields()`` on every
    per-step line of the trainer; returns the loss. Both routes (runtime hooks and the diff's registry) use it."""
    if hasattr(loss, "describe"):
        logging.info(f"--loss {name}: {loss.describe()}")
    if hasattr(loss, "log_fields"):
        _STEP_LOG.fields = loss.log_fields
        logging.getLogger().addFilter(_STEP_LOG)
    return loss


def announced(name: str, factory):
    """``factory`` whose losses are announced (:func:`announce_loss`): what the diff's registry is given."""

    @functools.wraps(factory)
    def create(args):
        return announce_loss(name, factory(args))

    return create


def _make_get_model_config(factory):
    upstream_get_model_config = factory.get_model_config

    @functools.wraps(upstream_get_model_config)
    def get_model_config(model_name):
        """Upstream's lookup; a ``BASE+TIMM_NAME`` (``models.timm_names``) becomes a config the first time."""
        cfg = upstream_get_model_config(model_name)
        if cfg is not None or not isinstance(model_name, str):
            return cfg
        from ..models.timm_names import timm_model_config

        cfg = timm_model_config(model_name, upstream_get_model_config)
        if cfg is not None:
            factory._MODEL_CONFIGS[model_name] = cfg  # list_models() and every later lookup know it
            cfg = upstream_get_model_config(model_name)
        return cfg

    return get_model_config


def _make_load_checkpoint(upstream_load_checkpoint):
    @functools.wraps(upstream_load_checkpoint)
    def load_checkpoint(model, checkpoint_path, strict=True, weights_only=True, device="cpu"):
        """Trainer checkpoints as they are: training-only modules ignored, one-line errors (see checkpoint.py)."""
        from .checkpoint import load_checkpoint as plugin_load_checkpoint

        return plugin_load_checkpoint(upstream_load_checkpoint, model, checkpoint_path, strict=strict,
                                      weights_only=weights_only, device=device)

    return load_checkpoint


def upstream_has_hooks(open_clip: types.ModuleType) -> bool:
    """True for an OpenCLIP that carries the hooks of ``patches/`` (its own loss and model-class registries):
    it registers the plugin itself (entry point, :mod:`.registration`) and nothing here patches it."""
    factory = getattr(open_clip, "factory", None)
    hooks = [hasattr(factory, name) for name in ("register_loss", "register_model_class",
                                                  "register_training_only_module", "register_train_hook")]
    if any(hooks) and not all(hooks):
        raise ImportError(f"{Path(getattr(open_clip, '__file__', 'open_clip')).parent} carries an older "
                          "patches/open_clip-3.3.0.diff of open-clip-lightclip: apply this version's diff to a "
                          "pristine OpenCLIP 3.3.0 (or reinstall open_clip_torch)")
    return all(hooks)


def _upstream_has_hooks() -> bool:
    """True where the seam leaves the trainer alone: an OpenCLIP with the hooks of ``patches/`` (it registers the
    plugin itself), or one outside the supported range (the plugin is off)."""
    import open_clip

    return upstream_has_hooks(open_clip) or not _supported(open_clip)


def install_open_clip(open_clip: types.ModuleType) -> None:
    if "open_clip" in _INSTALLED:
        return
    if upstream_has_hooks(open_clip) or not _supported(open_clip):
        return
    factory = open_clip.factory

    factory.add_model_config(model_configs_dir())

    if getattr(factory.CLIP, "__name__", "") != "_build_model":
        _build_model.upstream_clip = factory.CLIP
        factory.CLIP = _build_model
    for name in ("CustomTextCLIP", "CoCa"):  # HF-text / SigLIP configs, --force-custom-text, CoCa
        if not getattr(getattr(factory, name), "lightclip_builder", False):
            setattr(factory, name, _configured_builder(getattr(factory, name)))

    if not hasattr(factory.create_loss, "__wrapped__"):
        wrapped = _make_create_loss(factory.create_loss)
        factory.create_loss = wrapped
        open_clip.create_loss = wrapped

    if not hasattr(factory.get_model_config, "__wrapped__"):
        wrapped_cfg = _make_get_model_config(factory)
        factory.get_model_config = wrapped_cfg
        open_clip.get_model_config = wrapped_cfg

    if not hasattr(factory.load_checkpoint, "__wrapped__"):
        wrapped_load = _make_load_checkpoint(factory.load_checkpoint)
        factory.load_checkpoint = wrapped_load
        open_clip.load_checkpoint = wrapped_load
    _INSTALLED.add("open_clip")


# --- open_clip_train.params ----------------------------------------------------------------
class _PluginArgumentParser(argparse.ArgumentParser):
    """Upstream's parser plus the plugin's flags (so ``--help`` lists them) and their checks."""

    def parse_args(self, args=None, namespace=None):
        if not getattr(self, "_lightclip_args_added", False):
            from .trainer_args import add_args

            add_args(self)
            self._lightclip_args_added = True
        parsed = super().parse_args(args, namespace)
        from .trainer_args import check_args

        check_args(parsed, self)
        global _PENDING_TRAINER_ARGS, _TRAINER_ARGS
        _PENDING_TRAINER_ARGS = parsed if parsed.loss is not None else None
        _TRAINER_ARGS = parsed
        from .errors import install_excepthook

        install_excepthook(lambda: getattr(_TRAINER_ARGS, "resume", None))
        _install_trainer_process()
        return parsed


def _install_trainer_process() -> None:
    """What the trainer's ``main.py`` calls from torch directly, fixed for this process (once parsing shows it
    is a trainer): DDP of a CPU model (upstream passes ``device_ids=[cpu]``, which DDP rejects, so several
    ``--device cpu`` processes could not train), and ``epoch_N.pt`` saved atomically (upstream writes in
    place: a crash during the save left a truncated file where a good checkpoint was)."""
    if "trainer_process" in _INSTALLED:
        return
    import os
    import re

    import torch

    ddp = torch.nn.parallel.DistributedDataParallel

    class DistributedDataParallel(ddp):
        def __init__(self, module, device_ids=None, *args, **kwargs):
            if device_ids and all(torch.device(d).type == "cpu" for d in device_ids):
                device_ids = None  # a CPU module: DDP takes no device ids
            super().__init__(module, device_ids, *args, **kwargs)

    DistributedDataParallel.__qualname__ = ddp.__qualname__
    torch.nn.parallel.DistributedDataParallel = DistributedDataParallel

    save = torch.save

    @functools.wraps(save)
    def atomic_save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and re.fullmatch(r"epoch_\d+\.pt", os.path.basename(f)):
            tmp = f"{f}.tmp-{os.getpid()}"
            try:
                save(obj, tmp, *args, **kwargs)
                os.replace(tmp, f)  # the old file stays whole until the new one is complete
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            return None
        return save(obj, f, *args, **kwargs)

    torch.save = atomic_save
    _INSTALLED.add("trainer_process")


def install_params(params: types.ModuleType) -> None:
    """Make ``params.parse_args`` build ``_PluginArgumentParser`` instead of ``argparse.ArgumentParser``."""
    if "params" in _INSTALLED or _upstream_has_hooks():
        return
    import open_clip  # noqa: F401  (the hook above runs first: configs, version check)

    proxy = types.ModuleType("argparse")
    proxy.__dict__.update(argparse.__dict__)
    proxy.ArgumentParser = _PluginArgumentParser
    params.argparse = proxy
    _INSTALLED.add("params")


# --- open_clip_train.scheduler -------------------------------------------------------------
def install_scheduler(scheduler: types.ModuleType) -> None:
    """Record the trainer's step / total steps (training progress for schedules inside objectives)."""
    if "scheduler" in _INSTALLED or _upstream_has_hooks():
        return
    from ..losses.progress import PROGRESS

    for name in ("cosine_lr", "const_lr", "const_lr_cooldown"):
        setattr(scheduler, name, PROGRESS.wrap_scheduler_factory(getattr(scheduler, name)))
    _INSTALLED.add("scheduler")


# --- open_clip_train.file_utils ------------------------------------------------------------
def _warn_nothing_left(file_path, checkpoint) -> None:
    """One warning when the trainer's ``--resume`` checkpoint already reached ``--epochs``: upstream then exits 0
    having trained no step, without a word."""
    args = _TRAINER_ARGS
    if args is None or str(file_path) != str(getattr(args, "resume", None)) or not getattr(args, "train_data", None):
        return
    epoch = checkpoint.get("epoch") if isinstance(checkpoint, dict) else None
    if isinstance(epoch, int) and epoch >= args.epochs:
        logging.warning(f"--resume {file_path} finished epoch {epoch} and --epochs is {args.epochs}: nothing left to "
                        f"train; raise --epochs to train on")


def install_file_utils(file_utils: types.ModuleType) -> None:
    """``pt_load`` (the trainer's ``--resume``) raises a one-line ``CheckpointError`` naming the file and the cause
    (missing, a folder, unreadable, out of memory, truncated or corrupt), instead of torch's multi-line errors."""
    if "file_utils" in _INSTALLED or not hasattr(file_utils, "pt_load") or _upstream_has_hooks():
        return
    upstream = file_utils.pt_load

    @functools.wraps(upstream)
    def pt_load(file_path, map_location=None):
        from ..models.checkpoint import CheckpointError, raise_unreadable

        try:
            checkpoint = upstream(file_path, map_location=map_location)
        except FileNotFoundError as e:
            raise CheckpointError(f"{file_path}: no such file") from e
        except Exception as e:
            if "://" in str(file_path):  # remote (s3, ...): upstream's own errors say more
                raise
            raise_unreadable(file_path, e)  # by cause; an exception no file explains keeps its traceback
        _warn_nothing_left(file_path, checkpoint)
        return checkpoint

    file_utils.pt_load = pt_load
    _INSTALLED.add("file_utils")


# --- open_clip_train.data ------------------------------------------------------------------
def _worker_seed(increment: int = 0) -> int:
    """A data-loading seed from the run's ``--seed``, rank, DataLoader worker and ``increment`` (epoch):
    the same in every run with the same flags, whatever else consumed torch's RNG before."""
    import hashlib

    from torch.utils.data import get_worker_info

    info = get_worker_info()
    args = _TRAINER_ARGS
    key = f"{args.seed}:{getattr(args, 'rank', 0)}:{info.id if info else 0}:{increment}"
    return int(hashlib.sha256(key.encode()).hexdigest()[:15], 16)


_EPOCH_STAGES: list = []  # pipeline stages built by the current get_wds_dataset call that follow its epoch


def follow_epoch(stage):
    """Give ``stage`` the ``SharedEpoch`` of the loader being built (as ``stage.shared_epoch``) once it exists."""
    stage.shared_epoch = None
    _EPOCH_STAGES.append(stage)
    return stage


class _SeededShuffle:
    """Stands in for ``wds.shuffle(bufsize, initial)``: the same buffer shuffle, seeded by :func:`_worker_seed`
    and the trainer's epoch (its ``SharedEpoch``, attached once the loader is built), instead of webdataset's
    ``pid + time`` seed: a run resumed at epoch e shuffles as an uninterrupted run does at epoch e."""

    def __init__(self, bufsize: int = 1000, initial: int = 100, **kwargs):
        self.bufsize, self.initial, self.kwargs, self.passes = bufsize, initial, kwargs, 0
        follow_epoch(self)

    def __call__(self, src):
        import random

        from webdataset.filters import _shuffle

        self.passes += 1
        epoch = self.passes - 1 if self.shared_epoch is None else int(self.shared_epoch.get_value())
        rng = random.Random(_worker_seed(1_000_004 + epoch))  # apart from the shard seeds (epoch)
        return _shuffle(src, self.bufsize, self.initial, rng, **self.kwargs)


def _epoch_following(get_wds_dataset):
    """Upstream's ``get_wds_dataset``, then the stages it built that follow the epoch get its ``SharedEpoch``."""

    @functools.wraps(get_wds_dataset)
    def build(*args, **kwargs):
        _EPOCH_STAGES.clear()
        try:
            data = get_wds_dataset(*args, **kwargs)
            for stage in _EPOCH_STAGES:
                stage.shared_epoch = data.shared_epoch
        finally:
            _EPOCH_STAGES.clear()
        return data

    return build


def install_data(data: types.ModuleType) -> None:
    """Make the training data order a function of ``--seed`` alone, so two runs with the same seed see the
    same samples in the same order (what paired studies rely on). Upstream seeds its sample shuffle buffer
    from ``pid + time`` and its shard resampling from torch's RNG state when the loader starts, which
    depends on everything the run built before (e.g. LightCLIP's training heads)."""
    if "data" in _INSTALLED or not hasattr(data, "pytorch_worker_seed") or _upstream_has_hooks():
        return
    upstream_seed = data.pytorch_worker_seed

    @functools.wraps(upstream_seed)
    def pytorch_worker_seed(increment=0):
        if _TRAINER_ARGS is None or getattr(_TRAINER_ARGS, "seed", None) is None:
            return upstream_seed(increment)
        return _worker_seed(increment)

    data.pytorch_worker_seed = pytorch_worker_seed
    upstream_shuffle = data.wds.shuffle

    def shuffle(bufsize=1000, initial=100, **kwargs):
        if _TRAINER_ARGS is None or getattr(_TRAINER_ARGS, "seed", None) is None:
            return upstream_shuffle(bufsize, initial, **kwargs)
        return _SeededShuffle(bufsize, initial, **kwargs)

    upstream_to_tuple, upstream_map_dict = data.wds.to_tuple, data.wds.map_dict

    def to_tuple(*keys, **kwargs):
        """The trainer's ``to_tuple("image", "text")``; with ``--distill-cache`` the text field also carries the
        sample's cached teacher embeddings (packed, see ``data.teacher_cache``); with ``--distill-reinforced`` the
        image is a stored view replayed and the text field carries what ``data.reinforced`` packs."""
        if keys == ("image", "text") and _TRAINER_ARGS is not None:
            from .distill import reinforced_stage, sample_stage

            stage = reinforced_stage() or sample_stage(_TRAINER_ARGS)
            if stage is not None:
                return stage
        return upstream_to_tuple(*keys, **kwargs)

    def map_dict(**kwargs):
        """The trainer's ``map_dict(image=augment, text=tokenize)``; a reinforced run replays stored views instead."""
        from .distill import map_dict_stage

        return map_dict_stage(kwargs) or upstream_map_dict(**kwargs)

    from .distill import reinforced_get_wds_dataset

    data.get_wds_dataset = _epoch_following(reinforced_get_wds_dataset(data.get_wds_dataset))

    proxy = types.ModuleType(data.wds.__name__)  # data.py's `wds`, with the seeded shuffle
    proxy.__dict__.update(data.wds.__dict__)
    proxy.shuffle = shuffle
    proxy.to_tuple = to_tuple
    proxy.map_dict = map_dict
    data.wds = proxy
    from .shard_check import install_guard

    install_guard(data)  # faulty shards and members skipped and counted, never an endless loop
    _INSTALLED.add("data")


# --- clip_benchmark.metrics.zeroshot_classification ------------------------------------------
def install_clip_benchmark_zeroshot(zeroshot: types.ModuleType) -> None:
    """clip-benchmark 1.6.2's ``accuracy`` does ``float()`` of a 1-element array, which NumPy 2.4
    rejects; replace it with the same computation through ``.item()`` (pyproject also pins
    ``numpy<2.4``; this keeps ``clip_benchmark eval`` working where that pin is overridden)."""
    if "clip_benchmark_zeroshot" in _INSTALLED or not hasattr(zeroshot, "accuracy"):
        return
    upstream = zeroshot.accuracy

    @functools.wraps(upstream)
    def accuracy(output, target, topk=(1,)):
        pred = output.topk(max(topk), 1, True, True)[1].t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        n = len(target)
        return [correct[:k].reshape(-1).float().sum().item() / n for k in topk]

    zeroshot.accuracy = accuracy
    _INSTALLED.add("clip_benchmark_zeroshot")


# --- torch.distributed.run (torchrun) --------------------------------------------------------
def install_torchrun(run: types.ModuleType) -> None:
    """``torchrun ... -m open_clip_train.main --logs DIR`` fails in torchrun's own parser
    (``ambiguous option: --logs could match --logs-specs, --logs_specs``): argparse matches
    abbreviations even among the training script's arguments. Turn abbreviations off in
    torchrun's parser; its options are all still accepted under their full names."""
    if "torchrun" in _INSTALLED or not hasattr(run, "get_args_parser"):
        return
    upstream = run.get_args_parser

    @functools.wraps(upstream)
    def get_args_parser():
        parser = upstream()
        parser.allow_abbrev = False
        return parser

    run.get_args_parser = get_args_parser
    _INSTALLED.add("torchrun")
