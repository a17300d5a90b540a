"""Built-in task suites, registered through the ``metabench`` entry points like any plugin."""
from bench import hookimpl


@hookimpl
def register_suites(register):
    from bench_plugins.suites.miniimagenet import MiniImageNet
    from bench_plugins.suites.omniglot import Omniglot
    from bench_plugins.suites.sinusoid import Sinusoid

    register("miniimagenet", MiniImageNet)
    register("omniglot", Omniglot)
    register("sinusoid", Sinusoid)
