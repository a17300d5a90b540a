"""Built-in task suites, registered through the ``metabench`` entry points like any plugin."""
from bench import hookimpl


@hookimpl
def register_suites(register):
    from bench_plugins.suites.cifarfs import CIFARFS
    from bench_plugins.suites.cub import CUB
    from bench_plugins.suites.digits import Digits
    from bench_plugins.suites.fc100 import FC100
    from bench_plugins.suites.miniimagenet import MiniImageNet
    from bench_plugins.suites.omniglot import Omniglot
    from bench_plugins.suites.sinusoid import Sinusoid, SinusoidShift
    from bench_plugins.suites.tieredimagenet import TieredImageNet

    register("cifarfs", CIFARFS)
    register("cub", CUB)
    register("fc100", FC100)
    register("miniimagenet", MiniImageNet)
    register("omniglot", Omniglot)
    register("sinusoid", Sinusoid)
    register("sinusoid-shift", SinusoidShift)
    register("digits", Digits)
    register("tieredimagenet", TieredImageNet)
