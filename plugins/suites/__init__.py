"""Built-in task suites, registered through the ``metabench`` entry points like any plugin."""
from bench import hookimpl


@hookimpl
def register_suites(register):
    from bench_plugins.suites.omniglot import Omniglot
    from bench_plugins.suites.sinusoid import Sinusoid

    register("omniglot", Omniglot)
    register("sinusoid", Sinusoid)
