"""Built-in learners, registered through the ``metabench`` entry points like any plugin."""
from bench import hookimpl


@hookimpl
def register_learners(register):
    from bench_plugins.learners.adaptation_layer import AdaptationLayer
    from bench_plugins.learners.anil import ANIL
    from bench_plugins.learners.finetune import Finetune
    from bench_plugins.learners.maml import MAML, FirstOrderMAML
    from bench_plugins.learners.mamlpp import MAMLPlusPlus
    from bench_plugins.learners.matchingnet import MatchingNet
    from bench_plugins.learners.metaoptnet import MetaOptNet
    from bench_plugins.learners.metasgd import MetaSGD
    from bench_plugins.learners.protomaml import ProtoMAML
    from bench_plugins.learners.protonet import ProtoNet
    from bench_plugins.learners.r2d2 import R2D2
    from bench_plugins.learners.reptile import Reptile

    register("maml", MAML)
    register("fomaml", FirstOrderMAML)
    register("adaptation-layer", AdaptationLayer)
    register("finetune", Finetune)
    register("protonet", ProtoNet)
    register("metasgd", MetaSGD)
    register("anil", ANIL)
    register("reptile", Reptile)
    register("r2d2", R2D2)
    register("metaoptnet", MetaOptNet)
    register("matchingnet", MatchingNet)
    register("protomaml", ProtoMAML)
    register("mamlpp", MAMLPlusPlus)
