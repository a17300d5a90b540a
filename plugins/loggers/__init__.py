"""Built-in loggers, registered through the ``metabench`` hooks like any plugin (each needs its extra)."""
from bench import hookimpl


@hookimpl
def register_loggers(register):
    from bench_plugins.loggers.mlflow import MLflowLogger
    from bench_plugins.loggers.tensorboard import TensorBoardLogger

    register("mlflow", MLflowLogger)
    register("tensorboard", TensorBoardLogger)
