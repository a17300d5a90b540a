"""``bench data NAME``: every suite's data instructions (built-in or third-party), and ``--download`` without a
downloader."""
from __future__ import annotations

import pytest

from bench.cli import main

SUITES = {  # what each built-in suite's instructions must name: a source and its layout
    "omniglot": ("https://raw.githubusercontent.com/brendenlake/omniglot",
                 "images_background/<Alphabet>/characterNN/*.png", "DIR/omniglot/"),
    "miniimagenet": ("https://github.com/twitter/meta-learning-lstm", "mini-imagenet-cache-{train,validation,test}.pkl",
                     "DIR/miniimagenet/"),
    "tieredimagenet": ("https://github.com/renmengye/few-shot-ssl-public",
                       "{train,val,test}_images_png.pkl with {train,val,test}_labels.pkl", "DIR/tiered-imagenet/",
                       "https://github.com/kjunelee/MetaOptNet",
                       "{train,val,test}_images.npz with {train,val,test}_labels.pkl (MetaOptNet's)"),
    "cifarfs": ("https://github.com/bertinetto/r2d2",
                ("CIFAR_FS_{train,val,test}.pickle, or data/<class>/*.png with the class lists "
                 "splits/bertinetto/{train,val,test}.txt"), "DIR/CIFAR_FS/ or DIR/cifar100/"),
    "fc100": ("https://github.com/kjunelee/MetaOptNet", "FC100_{train,val,test}.pickle", "DIR/FC100/"),
    "cub": ("CUB_200_2011.tgz", "images/<NNN.Class_name>/*.jpg", "DIR/CUB_200_2011/"),
}

WAVES = '''
from bench import hookimpl
from bench_plugins.suites.sinusoid import Sinusoid


class Waves(Sinusoid):
    """Recorded waves."""

    name = "waves"

    @classmethod
    def data_instructions(cls):
        return "waves: copy waves.npz from https://example.org/waves into DIR/waves"


@hookimpl
def register_suites(register):
    register("waves", Waves)
'''


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_data_prints_where_to_get_the_data_and_how_to_stage_it(suite, capsys):
    assert main(["data", suite]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{suite}: ") and err == ""
    for fragment in (*SUITES[suite], "then run with --data-dir DIR (or set METABENCH_DATA_DIR=DIR)."):
        assert fragment in out, (fragment, out)
    assert ("Or fetch it: bench data omniglot --download DIR" in out) == (suite == "omniglot")


def test_data_of_a_suite_without_data_says_so(capsys):
    assert main(["data", "sinusoid"]) == 0
    assert capsys.readouterr().out == "sinusoid: the suite gives no data instructions and has no downloader\n"


def test_a_third_party_suites_instructions_are_printed(install, capsys):
    install("metabench-waves", {"waves_plugin": WAVES}, {"waves": "waves_plugin"})
    assert main(["data", "waves"]) == 0
    assert capsys.readouterr().out == "waves: copy waves.npz from https://example.org/waves into DIR/waves\n"


def test_download_without_a_downloader_prints_the_instructions_and_one_error_line(tmp_path, capsys):
    target = tmp_path / "data"
    assert main(["data", "cub", "--download", str(target)]) == 2
    out, err = capsys.readouterr()
    assert out.startswith("cub: CUB-200-2011 (Wah et al. 2011)") and "DIR/CUB_200_2011/" in out
    assert err == "bench data: error: suite 'cub' has no downloader; stage its data by hand as printed above\n"
    assert not target.exists()
    assert main(["data", "sinusoid", "--download", str(target)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "bench data: error: suite 'sinusoid' has no downloader\n"
