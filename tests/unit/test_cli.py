"""The ``bench`` command as a user runs it: listings, runs, results, and one clear line for bad input. Each
command runs in this process (``bench.cli.main``, output through capsys); the console script itself is run in
tests/e2e/test_console.py."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from bench_plugins.suites.sinusoid import Sinusoid

from bench import plugins
from bench.plugins import UnknownNameError
from bench.cli import build_parser, main
from bench.config import CONFIG_KEYS, RunConfig, build_run_config, parse_set_options, resolve_run_config

SMOKE = ("--profile", "smoke", "--tasks", "50", "--episodes", "3", "--steps", "2", "--shots", "5", "--no-progress")
BUILTIN_LEARNERS = ("adaptation-layer, anil, finetune, fomaml, l2l-maml, l2l-metasgd, maml, mamlpp, matchingnet, metaoptnet, "
                    "metasgd, protomaml, protonet, r2d2, reptile")
BUILTIN_SUITES = "cifarfs, cub, digits, fc100, miniimagenet, omniglot, sinusoid, sinusoid-shift, tieredimagenet"

GOOD_LEARNER = '''
    import dataclasses
    from bench import hookimpl
    from bench.api import Learner

    @dataclasses.dataclass
    class Config:
        value: float = 0.0

    class ZeroShot(Learner):
        """Predicts a constant; never adapts."""
        Config = Config

        def meta_train(self, ctx):
            for _ in ctx.batches(10):
                pass

        def adapt(self, support, steps):
            import torch
            for _ in range(steps + 1):
                yield lambda x: torch.full_like(x, self.config.value)

    @hookimpl
    def register_learners(register):
        register("zero-shot", ZeroShot)
'''
BROKEN = {
    "raising": ("from bench import hookimpl\n@hookimpl\ndef register_learners(register):\n    raise ValueError('no GPU today')\n",
                "hook register_learners raised ValueError: no GPU today"),
    "wrongtype": ("from bench import hookimpl\n@hookimpl\ndef register_learners(register):\n    register('not-a-learner', dict)\n",
                  "registered learner 'not-a-learner' as <class 'dict'>, which is not a subclass of bench.api.Learner"),
    "misspelled": ("from bench import hookimpl\n@hookimpl\ndef register_learner(register):\n    pass\n",
                   "implements unknown hook register_learner"),
    "unimportable": ("import no_such_module_here\n", "failed to import: ModuleNotFoundError: No module named 'no_such_module_here'"),
    "duplicate": ("from bench import hookimpl\nfrom bench_plugins.learners.maml import MAML\n"
                  "@hookimpl\ndef register_learners(register):\n    register('maml', MAML)\n",
                  "learner 'maml' is also registered by plugin 'learners'"),
    "adaptbatch": ("from bench import hookimpl\nfrom bench_plugins.learners.maml import MAML\n"
                   "class OldMAML(MAML):\n    def adapt_batch(self, supports, steps):\n        pass\n"
                   "@hookimpl\ndef register_learners(register):\n    register('old-maml', OldMAML)\n",
                   "learner 'old-maml' (OldMAML) defines adapt_batch(), which metabench no longer calls: implement "
                   "adapt(support, steps, *, batched=False) with its batched path and drop adapt_batch"),
}


@pytest.fixture
def third_party(install) -> Path:
    modules = {"good_plugin": GOOD_LEARNER, **{f"{name}_plugin": source for name, (source, _) in BROKEN.items()}}
    entry_points = {"good": "good_plugin", **{name: f"{name}_plugin" for name in BROKEN}}
    return install("fixture-plugins", modules, entry_points, version="1.2")


def test_help_and_plugins_do_not_import_torch():
    code = ("import sys; from bench.cli import main; main(['plugins']); "
            "assert 'torch' not in sys.modules and 'learn2learn' not in sys.modules, 'heavy import at start-up'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_plugins_lists_builtins_with_their_distribution(capsys):
    assert main(["plugins", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    names = {(entry["kind"], entry["name"]) for entry in listed["plugins"]}
    assert names == {*(("learner", name) for name in BUILTIN_LEARNERS.split(", ")),
                     *(("suite", name) for name in BUILTIN_SUITES.split(", ")), ("executor", "inline"),
                     ("executor", "processes"), ("executor", "ray"), ("logger", "mlflow"), ("logger", "tensorboard")}
    assert all(entry["distribution"] == "metabench" and entry["description"] for entry in listed["plugins"])
    assert listed["problems"] == []
    assert main(["plugins"]) == 0
    table = capsys.readouterr().out
    assert "maml" in table and "(metabench " in table


def test_broken_plugins_are_each_one_line_and_the_rest_load(third_party, capsys):
    assert main(["plugins"]) == 0
    stdout, stderr = capsys.readouterr()
    for name, (_, message) in BROKEN.items():
        lines = [line for line in stderr.splitlines() if f"plugin '{name}'" in line]
        assert len(lines) == 1 and message in lines[0], (name, stderr)
        assert "fixture-plugins 1.2" in lines[0]
    assert "zero-shot" in stdout and "good (fixture-plugins 1.2)" in stdout
    assert "maml" in stdout and "sinusoid" in stdout


def test_strict_makes_plugin_problems_fatal(third_party, capsys):
    assert main(["plugins", "--strict"]) == 2
    stderr = capsys.readouterr().err
    assert "strict" in stderr and "no GPU today" in stderr


def test_disable_plugins_by_entry_point_name(third_party, capsys, monkeypatch):
    monkeypatch.setenv("METABENCH_DISABLE_PLUGINS", ",".join(BROKEN))
    assert main(["plugins", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["problems"] == []
    assert "zero-shot" in {entry["name"] for entry in listed["plugins"]}


def test_all_beside_named_learners_adds_them_once(registry):
    everything = [registration.name for registration in registry.select("learner", "all")]
    named_only = [name for name, registration in registry.learners.items()
                  if not registration.cls.in_all and not registration.unavailable_reason]
    for extra in named_only:
        chosen = [registration.name for registration in registry.select("learner", f"all,{extra},maml")]
        assert chosen == [*everything, extra] and extra not in everything
    with pytest.raises(UnknownNameError, match="^unknown learner 'nope'; valid learners: all, "):
        registry.select("learner", "all,nope")


def test_smoke_run_writes_results_and_resumes(tmp_path, third_party, registry, capsys):
    out = tmp_path / "run"
    assert main(["run", "--learners", "all", *SMOKE, "--out", str(out)]) == 0
    stdout, stderr = capsys.readouterr()
    assert f"Results: {out}" in stdout
    available = [name for name, registration in registry.learners.items()  # the built-ins
                 if registration.cls.in_all and not registration.unavailable_reason]
    for learner in [*available, "zero-shot"]:
        assert learner in stdout
    if "l2l-maml" in registry.learners and not registry.learners["l2l-maml"].unavailable_reason:
        assert "note: not in 'all', run when named: l2l-maml, l2l-metasgd" in stderr
        assert "l2l-maml" not in stdout
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["status"] == "finished"
    assert run_info["config"]["hyperparameters"]["maml @ sinusoid K=5"]["inner_lr"] == 0.01
    assert run_info["environment"]["libraries"]["torch"] and run_info["environment"]["plugins"]["good"] == "fixture-plugins 1.2"
    records = pd.read_csv(out / "records.csv")
    regression = [name for name in available if not registry.learners[name].cls.unsupported_reason(Sinusoid())]
    assert len(records) == (len(regression) + 1) * 3 * 3  # learners (+ zero-shot; the classifiers n/a) x episodes x steps 0..2
    assert set(records.columns) >= {"suite", "setting", "learner", "seed", "episode", "step", "metric"}
    assert "## Accuracy" in (out / "report.md").read_text() and "<img" in (out / "report.html").read_text()
    assert {path.name for path in (out / "figures").iterdir()} == {"sinusoid-K-5-curves.png", "sinusoid-K-5-time.png",
                                                                   "sinusoid-K-5-bars.png", "sinusoid-K-5-learning.png"}
    assert not list(out.rglob("*.pkl")) and not list(out.rglob("*.pt"))

    assert main(["run", "--learners", "all", *SMOKE, "--out", str(out)]) == 0
    cells = len(available) + 1
    assert f"{cells} cells ({cells} already finished)" in capsys.readouterr().err
    assert main(["run", "--learners", "all", *SMOKE, "--seeds", "2", "--out", str(out)]) == 2
    assert "holds a run with a different configuration (differs in: seeds)" in capsys.readouterr().err


def test_config_file_and_overrides(tmp_path):
    config = tmp_path / "bench.toml"
    config.write_text('learners = ["maml"]\nprofile = "smoke"\ntasks = 50\nepisodes = 2\nsteps = 1\nshots = [5]\n'
                      '[set.maml]\ninner_lr = 0.02\n')
    out = tmp_path / "run"
    assert main(["run", "--config", str(config), "--set", "maml.inner_steps=2", "--out", str(out), "--no-progress"]) == 0
    hyperparameters = json.loads((out / "run.json").read_text())["config"]["hyperparameters"]
    assert hyperparameters == {"maml @ sinusoid K=5": {"inner_lr": 0.02, "inner_steps": 2, "meta_batch": 25,
                                                       "outer_lr": 0.001, "chunk_tasks": 0, "compile": "auto",
                                                       "inner_loss": "class_sum", "clip_grad": 0.0,
                                                       "outer_lr_decay": 1.0, "outer_lr_decay_every": 0,
                                                       "zero_head": False}}
    yaml_config = tmp_path / "bench.yaml"
    yaml_config.write_text("learners: maml\nprofile: smoke\ntasks: 50\nepisodes: 2\nsteps: 1\nshots: 5\n")
    assert main(["run", "--config", str(yaml_config), "--out", str(tmp_path / "yaml"), "--no-progress"]) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--learners", "mamll"], f"unknown learner 'mamll'; valid learners: all, {BUILTIN_LEARNERS}"),
        (["--suites", "omniglotx"], f"unknown suite 'omniglotx'; valid suites: all, {BUILTIN_SUITES}"),
        (["--set", "maml.innr_lr=0.1"], "--set maml.innr_lr: learner 'maml' has no hyper-parameter 'innr_lr'; valid: inner_steps, meta_batch, outer_lr, chunk_tasks, compile, inner_loss, clip_grad, outer_lr_decay, outer_lr_decay_every, inner_lr"),
        (["--set", "maml.inner_lr=fast"], "--set maml.inner_lr: expected float, got 'fast'"),
        (["--set", "maml.inner_steps=1.5"], "--set maml.inner_steps: expected int, got '1.5'"),
        (["--set", "inner_lr=0.1"], "expected LEARNER.KEY=VALUE"),
        (["--set", "finetune.head=svm"], "--set finetune: head must be 'linear' or 'cosine', got 'svm'"),
        (["--set", "raptile.lr=0.1"], "unknown learner 'raptile'"),
        (["--profile", "huge"], "unknown profile 'huge'; valid: smoke, quick, paper"),
        (["--device", "tpu"], "device: expected one of auto, cpu, cuda, got 'tpu'"),
        (["--shots", "7"], "suite 'sinusoid' has no setting with shots [7]; it offers: K=5, K=10, K=20"),
        (["--ways", "5"], "--ways selects nothing: sinusoid has no settings with ways (regression suites)"),
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path, capsys, args, message):
    assert main(["run", *args, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("error:") == 1 and message in stderr, stderr
    assert not (tmp_path / "run").exists()


def test_unwritable_out_is_refused(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["run", *SMOKE, "--out", str(blocker / "run")]) == 2
    assert f"cannot write to {blocker / 'run'}" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "text", "message"), [
    ("unknown.toml", 'learner = "maml"\n', "unknown key learner; valid keys: " + ", ".join(CONFIG_KEYS)),
    ("wrong.yaml", "seeds: many\n", "seeds: expected int, got 'many'"),
    ("zero.toml", "seeds = 0\n", "seeds: must be positive, got 0"),
    ("negative.yaml", "steps: -1\n", "steps: must be >= 0, got -1"),
    ("broken.toml", "learners = [\n", "not valid TOML"),
])
def test_bad_config_files_name_the_problem(tmp_path, capsys, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    assert main(["run", "--config", str(path)]) == 2
    assert f"bench run: error: config file {path}: {message}" in capsys.readouterr().err


def test_a_failing_cell_sets_the_exit_status(tmp_path, install, capsys):
    install("failing", {"failing_plugin": GOOD_LEARNER.replace(
        "for _ in ctx.batches(10):\n                pass", "raise RuntimeError('diverged on purpose')")},
        {"failing": "failing_plugin"})
    out = tmp_path / "run"
    assert main(["run", "--learners", "zero-shot,maml", *SMOKE, "--out", str(out)]) == 1
    assert "failed: RuntimeError: diverged on purpose" in "".join(capsys.readouterr())
    cells = {json.loads(path.read_text())["learner"]: json.loads(path.read_text()) for path in (out / "cells").glob("*.json")}
    assert cells["zero-shot"]["status"] == "failed" and cells["maml"]["status"] == "ok"
    assert json.loads((out / "run.json").read_text())["status"] == "finished with failed cells"


@pytest.mark.parametrize(("args", "message"), [
    (["run", "--seeds", "0"], "argument --seeds: must be at least 1, got 0"),
    (["run", "--seeds", "two"], "argument --seeds: expected an integer, got 'two'"),
    (["run", "--steps", "-1"], "argument --steps: must be at least 0, got -1"),
    (["run", "--episodes", "0"], "argument --episodes: must be at least 1, got 0"),
    (["run", "--tasks", "1e3"], "argument --tasks: expected an integer, got '1e3'"),
    (["run", "--shots", "x"], "argument --shots: expected an integer or 'vary', got 'x'"),
    (["run", "--ways", "5,0"], "argument --ways: must be at least 1, got 0"),
    (["run", "--workers", "0"], "argument --workers: must be at least 1, got 0"),
    (["run", "--cell-timeout", "-1"], "argument --cell-timeout: must be positive, got -1"),
    (["run", "--cell-timeout", "soon"], "argument --cell-timeout: expected a number, got 'soon'"),
    (["run", "--checkpoint-every", "0"], "argument --checkpoint-every: must be at least 1, got 0"),
    (["perf", "--iterations", "0"], "argument --iterations: must be at least 1, got 0"),
    (["perf", "--warmup", "-1"], "argument --warmup: must be at least 0, got -1"),
    (["perf", "--eval-episodes", "none"], "argument --eval-episodes: expected an integer, got 'none'"),
    (["perf", "--shots", "1,"], "argument --shots: expected an integer or 'vary', got ''"),
])
def test_bad_numbers_are_refused_when_parsing_before_any_plugin_loads(monkeypatch, capsys, args, message):
    monkeypatch.setattr(plugins, "load_plugins", lambda **kwargs: pytest.fail("plugins loaded for a bad number"))
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"bench {args[0]}: error: {message}\n"


def test_config_keys_are_the_run_config_fields_and_each_is_a_run_flag():
    fields = tuple(field.name for field in dataclasses.fields(RunConfig))
    assert CONFIG_KEYS == fields
    run_defaults = vars(build_parser().parse_args(["run"]))
    flags = set(fields) - {"tuned"}  # tuned: a config file's table only (bench tune's tuned.toml), no flag
    assert flags <= set(run_defaults)  # so --resume refuses every flag that would change the configuration
    assert all(run_defaults[key] is None for key in flags if key != "set")  # absent flags leave the file's values
    assert build_run_config({key: getattr(RunConfig(), key) for key in fields}, origin="test") == RunConfig()


def test_run_and_perf_share_the_selection_flags_with_their_own_defaults():
    run, perf = (vars(build_parser().parse_args([command])) for command in ("run", "perf"))
    selection = {"learners", "suites", "shots", "ways", "device", "data_dir", "set"}
    assert {key: run[key] for key in selection} == {**dict.fromkeys(selection), "set": []}
    assert {key: perf[key] for key in selection} == {"learners": "maml,fomaml,adaptation-layer,finetune",
                                                     "suites": "sinusoid,omniglot", "shots": [10, 1], "ways": None,
                                                     "device": None, "data_dir": None, "set": []}
    given = ["--learners", "maml", "--suites", "omniglot", "--shots", "5,10", "--ways", "20", "--device", "cpu", "--data-dir", "d", "--set", "a.b=1"]
    assert ({key: value for key, value in vars(build_parser().parse_args(["run", *given])).items() if key in selection}
            == {key: value for key, value in vars(build_parser().parse_args(["perf", *given])).items() if key in selection})


def test_set_options_make_one_table_over_the_config_files(tmp_path):
    file_table = {"maml": {"inner_lr": 0.02}}
    table = parse_set_options(["maml.inner_steps=2", " protonet.distance = cosine ", "maml.inner_lr=0.5"], file_table)
    assert table == {"maml": {"inner_lr": "0.5", "inner_steps": "2"}, "protonet": {"distance": "cosine"}}
    assert file_table == {"maml": {"inner_lr": 0.02}}
    config = tmp_path / "bench.toml"
    config.write_text('seeds = 2\nshots = [5]\n[set.maml]\ninner_lr = 0.02\n')
    resolved = resolve_run_config(config, {"seeds": 3, "shots": None}, ["maml.inner_steps=2"])
    assert (resolved.seeds, resolved.shots, resolved.set) == (3, [5], {"maml": {"inner_lr": 0.02, "inner_steps": "2"}})


def test_every_command_runs_in_process(tmp_path, capsys, monkeypatch):
    out = tmp_path / "results" / "run"
    assert main(["run", "--learners", "maml", *SMOKE, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"Results: {out} (report.md, report.html)" in captured.out and "maml" in captured.out
    assert "metabench: 1 cells (0 already finished)" in captured.err and "ok     maml | sinusoid K=5 | seed 0" in captured.err
    assert main(["report", str(out), "--format", "csv"]) == 0 and "maml" in capsys.readouterr().out
    assert main(["compare", str(out), str(out)]) == 0 and "maml" in capsys.readouterr().out
    assert main(["runs", "--results", str(tmp_path / "results")]) == 0 and "finished" in capsys.readouterr().out
    assert main(["plugins", "--json"]) == 0 and json.loads(capsys.readouterr().out)["problems"] == []
    assert main(["new-plugin", "my-learner", "--dir", str(tmp_path)]) == 0 and (tmp_path / "metabench-my-learner").is_dir()
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "bench report: error:" in capsys.readouterr().err


def test_seeds_default_to_the_profiles_and_are_saved_resolved():
    """quick runs 3 seeds and paper 5 unless told otherwise (smoke 1, for speed); run.json holds the number."""
    assert [build_run_config({"profile": profile}, "test").seeds for profile in ("smoke", "quick", "paper")] == [1, 3, 5]
    assert build_run_config({}, "test").seeds == 3
    assert build_run_config({"profile": "paper", "seeds": 2}, "test").seeds == 2
    assert dataclasses.asdict(build_run_config({"profile": "paper"}, "test"))["seeds"] == 5


def test_no_progress_prints_a_heartbeat_per_running_cell(tmp_path, capsys, monkeypatch):
    """Without bars a long cell still says how far it is (here every 0 s instead of every minute; the loss joins the
    line once the host has checked one, every 20 logged losses)."""
    monkeypatch.setattr("bench.progress.HEARTBEAT_SECONDS", 0.0)
    assert main(["run", "--learners", "maml", *SMOKE, "--out", str(tmp_path / "run")]) == 0  # SMOKE: --no-progress
    beats = [line for line in capsys.readouterr().err.splitlines() if line.startswith("  ...    meta-train maml")]
    assert beats and all(" / 50 tasks, " in line and " tasks/s" in line for line in beats)
    assert beats[-1].startswith("  ...    meta-train maml | sinusoid K=5 | seed 0: 50 / 50 tasks")


def test_dry_run_prints_the_resolved_plan_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--learners", "maml,protonet", "--suites", "sinusoid", "--shots", "10", "--seeds", "2",
                 "--profile", "smoke", "--set", "maml.inner_steps=3", "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    rows = {line.split()[2]: line for line in printed.splitlines() if line.startswith("sinusoid")}
    assert set(rows) == {"maml", "protonet"} and " 0,1 " in rows["maml"] and " 500 " in rows["maml"]
    assert "inner_steps=3" in rows["maml"] and "inner_lr=0.01" in rows["maml"]  # --set over the suite's defaults
    assert "n/a: protonet classifies by nearest class prototype" in rows["protonet"]
    assert "4 cells, profile smoke; nothing was run (--dry-run)" in printed and not out.exists()


def test_describe_shows_a_learners_hyperparameters_per_suite_setting_and_a_suites_budgets(capsys):
    assert main(["describe", "maml"]) == 0
    printed = capsys.readouterr().out
    assert "inner_loss            one of mean, class_sum    class_sum" in printed
    rows = {tuple(line.split()[:3]): line for line in printed.splitlines() if line.startswith(("omniglot", "sinusoid"))}
    assert rows[("omniglot", "5-way", "1-shot")].endswith("meta_batch=32 inner_lr=0.4")  # MAML's Omniglot settings
    assert rows[("sinusoid", "K=10", "100,000")].endswith("–")  # the defaults are sinusoid's
    assert "regression      inner_lr=FloatRange(low=0.005, high=0.02, log=True)" in printed
    assert main(["describe", "omniglot"]) == 0
    printed = capsys.readouterr().out
    assert "kind classification, metric accuracy (higher is better)" in printed
    assert any(line.split()[:2] == ["20-way", "1-shot"] and line.rstrip().endswith("960,000 / 600")
               for line in printed.splitlines())  # MAML's 20-way paper budget: 60,000 x 16


def test_describe_refuses_an_unknown_name_or_profile_in_one_line(capsys):
    assert main(["describe", "mamll"]) == 2
    assert "bench describe: error: no learner or suite named 'mamll'; installed: adaptation-layer" in capsys.readouterr().err
    assert main(["describe", "maml", "--profile", "fast"]) == 2
    assert "unknown profile 'fast'; valid: smoke, quick, paper" in capsys.readouterr().err
