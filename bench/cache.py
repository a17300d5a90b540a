"""metabench's cache folder, ``$METABENCH_CACHE_DIR`` or ``~/.cache/metabench``: decoded data sets and compiled
kernels, kept between processes so that a machine pays for each once."""
from __future__ import annotations

import os
from pathlib import Path

CACHE_DIR_ENV = "METABENCH_CACHE_DIR"
INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def cache_dir() -> Path:
    """$METABENCH_CACHE_DIR, or ~/.cache/metabench."""
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "metabench")


def use_inductor_cache() -> None:
    """Keep ``torch.compile``'s kernels in ``cache_dir()/inductor`` unless $TORCHINDUCTOR_CACHE_DIR names another
    folder than Inductor's default (a per-user temporary folder that does not outlive a reboot; torch writes it into
    the variable itself when it first looks). Call before compiling."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    if os.environ.get(INDUCTOR_CACHE_ENV) in (None, default_cache_dir()):
        os.environ[INDUCTOR_CACHE_ENV] = str(cache_dir() / "inductor")
