"""FC100 few-shot classification (Oreshkin et al. 2018): CIFAR-100 split by superclass."""
from __future__ import annotations

from bench_plugins.suites.cifarfs import CifarPickleSuite

from bench.api import Setting


class FC100(CifarPickleSuite):
    """FC100: CIFAR-100's 20 superclasses split 12/4/4, so 60/20/20 classes x 600 images, 32x32 RGB.

    Reads MetaOptNet's ``FC100_{train,val,test}.pickle`` from ``--data-dir`` (``DIR/FC100`` or ``DIR``) or
    $METABENCH_DATA_DIR (the format of ``CifarPickleSuite``). The split is the files': Oreshkin et al.'s superclasses
    (coarse labels) 1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19 for meta-training, 8, 11, 13, 16 for meta-validation and
    0, 7, 12, 14 for meta-testing (TADAM's datasets/create_dataset_cifar100.py, ``class_split``), so that no meta-test
    class shares a superclass with a meta-train one. The pickles carry no superclasses, so the split is not checked;
    nor are the counts (tests use tiny copies). ``paper`` profile: TADAM's 30,000 steps of 2 tasks (model/tadam.py:
    ``--number_of_steps``, ``--num_tasks_per_batch``), 60,000 tasks, both settings. Deviation: TADAM's backbone is
    a ResNet-12, and its own script writes ``few-shot-{split}.npz`` files rather than these pickles.
    """

    name = "fc100"
    ROOT_FOLDER = "FC100"
    PICKLE = "FC100_{split}.pickle"
    LAYOUT = "FC100_{train,val,test}.pickle"
    SOURCE = ("FC100 (Oreshkin et al. 2018): MetaOptNet's FC100_{train,val,test}.pickle (the FC100 link of "
              "https://github.com/kjunelee/MetaOptNet's README; learn2learn's mirror: "
              "https://zenodo.org/record/7978538/files/fc100.zip); unzip it.")

    @classmethod
    def budget(cls, profile: str, setting: Setting) -> dict[str, int]:
        """``paper``: TADAM's 30,000 steps x 2 tasks per step (model/tadam.py's defaults), 60,000 tasks."""
        if profile == "paper":
            return {"meta_train_tasks": 30_000 * 2}
        return super().budget(profile, setting)
