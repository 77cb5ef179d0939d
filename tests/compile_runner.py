"""The real trainer with ``torch.compile``'s backend set to ``aot_eager``: Dynamo and AOTAutograd trace exactly
what ``--torchcompile`` traces (graph breaks, symbolic shapes, guards, recompilations), without Inductor's code
generation, which takes minutes per graph on a CPU."""
import functools
import os
import sys

import torch

torch.compile = functools.partial(torch.compile, backend=os.environ.get("LIGHTCLIP_TEST_COMPILE_BACKEND", "aot_eager"))

from open_clip_train.main import main  # noqa: E402

if __name__ == "__main__":
    main(sys.argv[1:])
