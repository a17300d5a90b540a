"""metabench: a plugin-based benchmarking suite for few-shot meta-learning."""
from importlib.metadata import PackageNotFoundError, version

from bench.hookspecs import hookimpl

try:
    __version__ = version("metabench")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["hookimpl", "__version__"]
