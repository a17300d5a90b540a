"""Built-in executors, registered through the ``metabench`` entry points like any plugin."""
from bench import hookimpl


@hookimpl
def register_executors(register):
    from bench_plugins.executors.inline import InlineExecutor
    from bench_plugins.executors.processes import ProcessExecutor
    from bench_plugins.executors.ray import RayExecutor

    register("inline", InlineExecutor)
    register("processes", ProcessExecutor)
    register("ray", RayExecutor)
