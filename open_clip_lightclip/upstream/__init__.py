"""The seam with upstream OpenCLIP: start-up hook, every patch, trainer flags and checks, checkpoint loading.

Also the trainer's command line (``python -m open_clip_train.main ...``) for studies and tests.

The only room that changes upstream code. May import ``models/``, ``losses/`` and ``data/``;
never ``export/``, ``studies/``, ``benchmarks/`` or ``commands/``. Keep this file free of
imports: the ``.pth`` start-up hook imports ``upstream.autoload`` through it (no torch at start-up).
"""
