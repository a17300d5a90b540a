"""The ``bench`` command: parses the command line and hands the work to the host (``bench.session`` for
``bench run``). Heavy imports (torch, plugins) happen inside the commands that need them, so ``bench --help``
and ``bench plugins`` stay fast. ``main(argv)`` returns the exit status; only a command line that does not
parse raises ``SystemExit`` (status 2, one line on stderr)."""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from bench.errors import BenchError

REPORT_FORMATS = ("md", "html", "latex", "csv")

EXIT_OK, EXIT_CELLS_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (``bench run: error: ...``), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _integer(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    return _integer(text, 1)


def non_negative_int(text: str) -> int:
    """An argparse type: an integer of at least 0."""
    return _integer(text, 0)


def positive_ints(text: str) -> list[int]:
    """An argparse type: comma-separated integers of at least 1."""
    return [positive_int(part.strip()) for part in text.split(",")]


def shot_counts(text: str) -> list[int | str]:
    """An argparse type: comma-separated shots, each an integer of at least 1 or ``vary`` (the settings whose episodes
    vary in ways and shots: Meta-Dataset's sampler)."""
    from bench.api import VARY

    shots: list[int | str] = []
    for part in (part.strip() for part in text.split(",")):
        if part != VARY and not part.lstrip("-").isdigit():
            raise argparse.ArgumentTypeError(f"expected an integer or {VARY!r}, got {part!r}")
        shots.append(VARY if part == VARY else positive_int(part))
    return shots


def positive_float(text: str) -> float:
    """An argparse type: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


SELECTION_FLAGS = (  # flag, type, metavar, help, the default of bench run (from the config)
    ("--learners", str, None, "'all' and/or comma-separated learner names (all,l2l-maml: both)", "all"),
    ("--suites", str, None, "'all' and/or comma-separated suite names", "sinusoid"),
    ("--shots", shot_counts, "K,...", "only the settings with these shots; 'vary': the settings whose episodes vary in "
     "ways and shots (Meta-Dataset's sampler)", "all settings"),
    ("--ways", positive_ints, "N,...", "only the settings with these ways (classification suites)", "all settings"),
    ("--device", str, None, "auto (CUDA when present), cpu or cuda", "auto"),
    ("--data-dir", str, "DIR", "where suites find their data sets", "$METABENCH_DATA_DIR"),
    ("--backbone", str, "NAME", "the network every suite builds, one each suite offers (bench describe SUITE lists "
     "them), e.g. resnet12", "each suite's standard"),
)


def _dest(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def add_selection_flags(parser: argparse.ArgumentParser, **defaults: str) -> None:
    """Declare the flags that choose what runs (``bench run`` and ``bench perf``): learners, suites, settings,
    device, data folder and ``--set``. A flag in ``defaults`` (by its option name, ``data_dir``) gets that
    default; the others are None when not given, so that a config file or ``RunConfig`` decides."""
    for flag, kind, metavar, text, usual in SELECTION_FLAGS:
        default = defaults.get(_dest(flag))
        parser.add_argument(flag, type=kind, default=default, metavar=metavar,
                            help=f"{text} (default: {default if default is not None else usual})")
    parser.add_argument("--set", action="append", default=[], metavar="LEARNER.KEY=VALUE",
                        help="override a learner hyper-parameter, e.g. maml.inner_lr=0.01 (repeatable)")


def _add_plugin_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strict", action="store_true", help="fail when any plugin fails to load")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="bench", description="metabench: benchmark few-shot meta-learners under one paired episodic protocol.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="meta-train and evaluate learners on suites", description="Meta-train and evaluate every learner on every suite setting, then print the summary tables.")
    add_selection_flags(run)
    run.add_argument("--test-suites", type=str, metavar="SUITE,...", help="cross-domain: also test each model on these suites' test episodes (same kind, ways and shots; e.g. --suites omniglot --test-suites digits); tables name the pair, omniglot→digits")
    run.add_argument("--profile", help="budget profile: smoke, quick (default) or paper")
    run.add_argument("--seeds", type=positive_int, metavar="N", help="number of seeds, 0..N-1 (default: the profile's: smoke 1, quick 3, paper 5)")
    run.add_argument("--steps", type=non_negative_int, metavar="S", help="adaptation steps at test time (default: the profile's, 10)")
    run.add_argument("--episodes", type=positive_int, metavar="N", help="test episodes per cell (default: the profile's)")
    run.add_argument("--tasks", type=positive_int, metavar="N", help="meta-training budget per cell in tasks seen (default: the profile's)")
    run.add_argument("--val-every", type=positive_int, metavar="TASKS", help="score meta-validation every TASKS tasks of meta-training (default: the profile's 2 / 10 / 20 points over the budget)")
    run.add_argument("--val-episodes", type=non_negative_int, metavar="N", help="meta-val episodes per validation point (default: the profile's: smoke 10, quick 100, paper 600; 0: no meta-validation, test the last state at the last step)")
    run.add_argument("--select", choices=("best-val", "last"), help="which meta-trained state the test scores: the best meta-validation point (default) or the last; the step is chosen on meta-validation either way")
    run.add_argument("--out", help="run folder (default: results/<time>-<suites>-<profile>); an existing run folder of the same configuration is resumed")
    run.add_argument("--config", type=Path, help="TOML or YAML file with the same keys as these flags (flags win)")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR", help="finish an interrupted run: its configuration from RUN_DIR/run.json; finished cells are kept, failed ones run again")
    run.add_argument("--executor", help="how cells run: auto (default: on a CPU, cells with small networks side by side, one worker process per core; else inline), inline (one at a time here), processes (--workers on this machine), ray (a Ray cluster), or a plugin's; $METABENCH_EXECUTOR sets the default")
    run.add_argument("--workers", type=positive_int, metavar="N", help="cells at a time for processes / a local Ray (default: CPU cores)")
    run.add_argument("--ray-address", help="the Ray cluster to use (default: start a local Ray for the run)")
    run.add_argument("--cell-timeout", type=positive_float, metavar="SECONDS", help="fail a cell that runs longer (the run goes on)")
    run.add_argument("--save-models", action="store_true", default=None, help="keep each finished cell's tested model (after selection) in the run folder as cells/<cell>.model.pt, for bench eval; changes no number, and --resume keeps it")
    run.add_argument("--checkpoint-every", type=positive_int, metavar="TASKS", help="save a cell's meta-training state every TASKS tasks, so that a killed cell resumes near where it stopped (learners that support it)")
    run.add_argument("--seeds-together", type=non_negative_int, default=0, metavar="N", help="meta-train up to N seeds of a learner and suite setting at once, as one vectorised model, for learners that can (bench plugins marks them); same numbers to float rounding (default 0: all the run's seeds; 1: one at a time)")
    run.add_argument("--loggers", metavar="NAME,...", help="stream each cell's training curve and meta-validation points live to these loggers: tensorboard (RUN/tensorboard), mlflow (RUN/mlflow.db), or a plugin's (bench plugins lists them)")
    run.add_argument("--logger-option", action="append", default=[], metavar="NAME.KEY=VALUE", help="an option of a logger, e.g. tensorboard.log_dir=runs or mlflow.tracking_uri=sqlite:///mlflow.db (repeatable)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars: a line per running cell every minute instead")
    run.add_argument("--dry-run", action="store_true", help="print the resolved plan (cells, budgets, hyper-parameters) and run nothing")
    _add_plugin_flags(run)

    evaluation = sub.add_parser("eval", help="test a run's saved models again: more steps, more episodes, other test suites",
                                description="Rebuild each model a run saved (bench run --save-models) and score it on "
                                            "the test episodes again, into a new run folder; each cell's result is "
                                            "read at the step its run chose on meta-validation. RUN_DIR is only read.")
    evaluation.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    evaluation.add_argument("--out", type=Path, required=True, metavar="NEW_DIR", help="the new run folder")
    evaluation.add_argument("--steps", type=non_negative_int, metavar="S", help="adaptation steps at test time (default: the run's)")
    evaluation.add_argument("--episodes", type=positive_int, metavar="N", help="test episodes per cell (default: the run's); the first are the run's own")
    evaluation.add_argument("--test-suites", type=str, metavar="SUITE,...", help="cross-domain: also test each model on these suites' test episodes, as bench run --test-suites (default: the run's)")
    evaluation.add_argument("--device", type=str, help="auto, cpu or cuda (default: the run's)")
    evaluation.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_plugin_flags(evaluation)

    plugins = sub.add_parser("plugins", help="list installed learners and suites", description="List every registered learner and suite and any plugin that failed to load.")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    _add_plugin_flags(plugins)

    describe = sub.add_parser("describe", help="what a learner takes or a suite offers, without running",
                              description="A learner: its hyper-parameters with their defaults, the values it gets on "
                                          "each installed suite setting, and what bench tune searches. A suite: its "
                                          "settings and the budget of each profile.")
    describe.add_argument("name", help="a registered learner or suite (bench plugins lists them)")
    describe.add_argument("--profile", default="quick", help="the profile whose budgets a learner's table shows (default: quick)")
    _add_plugin_flags(describe)

    report = sub.add_parser("report", help="rewrite a run folder's report; print it or write it in one format",
                            description="Re-aggregate a run folder (also a partial one): rewrite its report.md, "
                                        "report.html, summary.csv and figures/, and print the tables, or write one format.")
    report.add_argument("run_dir", type=Path)
    report.add_argument("--format", choices=REPORT_FORMATS, help="print (or write to --out) this format: md, html, latex or csv")
    report.add_argument("--out", type=Path, metavar="FILE", help="write the --format output here (Markdown figures go to figures/ beside it)")

    compare = sub.add_parser("compare", help="compare runs: the same learners and settings side by side, with significance",
                             description="Put the same (suite, setting, learner) groups of several run folders side by side, "
                                         "with each run's difference to the first and a test (paired where the runs scored "
                                         "the same test episodes); refuses runs that share nothing comparable.")
    compare.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    compare.add_argument("--format", choices=("text", "md", "latex", "csv"), default="text", help="output format (default: text)")

    runs = sub.add_parser("runs", help="list the run folders in results/", description="List the run folders under a results folder.")
    runs.add_argument("--results", type=Path, default=Path("results"), help="results folder (default: results)")

    db = sub.add_parser("db", help="build or update one SQLite database of every run under a results folder",
                        description="Write (or bring up to date) a SQLite database of every run folder and tune folder "
                                    "under RESULTS_DIR: runs, cells, records, val_curves, train_curves, results, "
                                    "tuning_trials, provenance. Unchanged folders are skipped, changed ones "
                                    "replaced, vanished ones removed; an unreadable folder is named in a warning and "
                                    "the rest is built.")
    db.add_argument("results", type=Path, nargs="?", default=Path("results"), metavar="RESULTS_DIR", help="results folder (default: results)")
    db.add_argument("--out", type=Path, default=Path("results.db"), metavar="FILE", help="the database (default: results.db)")

    leaderboard = sub.add_parser("leaderboard", help="write a static site of each learner's best result per suite setting",
                                 description="Write a self-contained static site (no network needed): per suite setting, "
                                             "each learner's best result across the runs under RESULTS_DIR, with its "
                                             "interval, budget, tuning and date, linked to that run's report, copied in.")
    leaderboard.add_argument("results", type=Path, metavar="RESULTS_DIR")
    leaderboard.add_argument("--out", type=Path, default=Path("site"), metavar="DIR", help="the site's folder (default: site)")

    perf = sub.add_parser("perf", help="time meta-training and evaluation, beside reference implementations",
                          description="Meta-training tasks/s, peak memory and evaluation episodes/s of learners on one "
                                      "setting per suite (the first with the given shots and ways; a suite without its "
                                      "data is skipped with a warning); learners with a reference implementation (maml, "
                                      "fomaml, metasgd: learn2learn's MAML and MetaSGD) are timed beside it and checked "
                                      "for the same meta-gradient.")
    add_selection_flags(perf, learners="maml,fomaml,adaptation-layer,finetune", suites="sinusoid,omniglot",
                        shots="10,1")
    perf.add_argument("--iterations", type=positive_int, default=20, help="timed meta-training iterations per learner (default: 20)")
    perf.add_argument("--warmup", type=non_negative_int, default=10, help="untimed first iterations, enough for a learner to settle (e.g. compile=auto's timed eager steps and its compile) (default: 10)")
    perf.add_argument("--profile", default="quick", help="the run profile whose budget the learners see, for what they decide from it, e.g. compile=auto (default: quick)")
    perf.add_argument("--eval-episodes", type=positive_int, default=100, help="test episodes timed per learner (default: 100)")
    perf.add_argument("--json", type=Path, metavar="FILE", help="also write the rows as JSON")
    _add_plugin_flags(perf)

    scaffold = sub.add_parser("new-plugin", help="create a learner or suite plugin package to start from",
                              description="Write metabench-NAME/: pyproject.toml with the entry point, a working template "
                                          "learner (or suite, --kind suite), its hook, and a conformance test (see "
                                          "docs/writing-a-plugin.md).")
    scaffold.add_argument("name", help="the plugin's name, e.g. my-learner")
    scaffold.add_argument("--kind", choices=("learner", "suite"), default="learner",
                          help="learner: first-order MAML in a plain loop; suite: random quadratics (default: learner)")
    scaffold.add_argument("--dir", type=Path, default=Path("."), help="where to create the package folder (default: .)")

    tune = sub.add_parser("tune", help="tune every learner on meta-validation, with the same budget for each",
                          description="One Optuna study per learner and suite setting (TPE, seeded; median pruning on "
                                      "the meta-validation curve), all in TUNE_DIR/study.db: every learner gets --trials "
                                      "trials of --trial-tasks meta-training tasks, scored on meta-val episodes only. "
                                      "Writes TUNE_DIR/tuned.toml (bench run --config reads it as it is) and the tuning "
                                      "report tuning.md / tuning.html. A killed tune resumes with --resume TUNE_DIR.")
    add_selection_flags(tune)
    tune.add_argument("--trials", type=positive_int, metavar="N", help="trials per learner and suite setting (required)")
    tune.add_argument("--trial-tasks", type=positive_int, metavar="B", help="meta-training tasks per trial (required)")
    tune.add_argument("--val-episodes", type=positive_int, metavar="N", help="meta-val episodes per validation point (default: the quick profile's, 100)")
    tune.add_argument("--val-every", type=positive_int, metavar="TASKS", help="tasks between validation points, where trials may be pruned (default: 10 points per trial)")
    tune.add_argument("--seed", type=non_negative_int, metavar="S", help="the trials' meta-training seed and the sampler's seed (default: 0)")
    tune.add_argument("--workers", type=positive_int, metavar="N", help="trials at a time, run by the executor (default: 1); part of the tune's configuration, since what TPE asks depends on it")
    tune.add_argument("--population", type=positive_int, metavar="P", help="trials each worker meta-trains at once as one vectorised model, for learners that can ([seeds together] in bench plugins): those of a batch that differ only in continuous hyper-parameters (learning rates); workers x P trials are asked at a time, so it is part of the tune's configuration (default: 1)")
    tune.add_argument("--out", type=Path, metavar="TUNE_DIR", help="tune folder (default: results/tune-<time>-<suites>)")
    tune.add_argument("--resume", type=Path, metavar="TUNE_DIR", help="go on with a killed or interrupted tune: its configuration from TUNE_DIR/tune.json; trials left running run again with the same parameters")
    tune.add_argument("--executor", default="inline", help="how trials run: inline (default), processes, ray, or a plugin's")
    tune.add_argument("--ray-address", help="the Ray cluster to use (default: start a local Ray); the tune folder must be on a disk the cluster shares")
    tune.add_argument("--no-progress", action="store_true", help="no progress bars: a line per running trial every minute instead")
    _add_plugin_flags(tune)

    data = sub.add_parser("data", help="where a suite's data set comes from; fetch it",
                          description="Say where a suite's data set comes from and how to stage it for --data-dir; with "
                                      "--download, download and stage it (where the suite has a downloader).")
    data.add_argument("suite", help="suite name, e.g. omniglot")
    data.add_argument("--download", type=Path, metavar="DIR", help="data folder to stage into; then run with --data-dir DIR")
    _add_plugin_flags(data)
    return parser


def _load_registry(strict: bool):
    from bench.plugins import load_plugins

    registry = load_plugins(strict=strict)
    for problem in registry.problems:
        print(f"warning: {problem}", file=sys.stderr)
    return registry


def cmd_plugins(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from bench.api import trains_seeds_together

    registry = _load_registry(args.strict)
    entries = [
        {"kind": reg.kind, "name": reg.name, "description": reg.description, "unavailable": reg.unavailable_reason,
         "plugin": reg.source.name, "distribution": reg.source.distribution, "version": reg.source.version,
         "seeds_together": reg.kind == "learner" and trains_seeds_together(reg.cls)}
        for kind in ("learner", "suite", "executor", "logger") for _, reg in sorted(registry.of_kind(kind).items())
    ]
    problems = [{"plugin": p.source.name, "target": p.source.target, "distribution": p.source.distribution, "problem": p.message}
                for p in registry.problems]
    if args.json:
        print(json.dumps({"plugins": entries, "problems": problems}, indent=2))
        return EXIT_OK
    rows = [[e["kind"], e["name"], f"unavailable: {e['unavailable']}" if e["unavailable"]
             else e["description"] + (" [seeds together]" if e["seeds_together"] else ""),
             f"{e['plugin']} ({e['distribution']} {e['version']})"] for e in entries]
    print(tabulate(rows, headers=["kind", "name", "description", "plugin"], tablefmt="simple"))
    if problems:
        print("\nPlugins that failed to load:")
        for problem in registry.problems:
            print(f"  {problem}")
    return EXIT_OK


def _run_config(args: argparse.Namespace):
    """The run's configuration: the config file's values, then the flags given on top; or, with ``--resume``,
    the run folder's own (flags that would change it are refused)."""
    from bench.config import CONFIG_KEYS, resolve_run_config

    given = {key: getattr(args, key) for key in CONFIG_KEYS if key not in ("set", "tuned")}  # tuned: from a file only
    if args.resume is None:
        return resolve_run_config(args.config, given, args.set)
    flags = {**given, "config": args.config, "set": args.set or None}
    changing = [f"--{key.replace('_', '-')}" for key, value in flags.items() if value is not None]
    if changing:
        raise BenchError(f"--resume takes the configuration from {args.resume / 'run.json'}; drop {', '.join(changing)}")
    from bench.session import resumed_config

    return resumed_config(args.resume)


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    config = _run_config(args)
    registry = _load_registry(args.strict)
    if args.dry_run:
        return _print_plan(config, registry)

    from bench import render
    from bench.session import (AUTO_EXECUTOR, EXECUTOR_ENV, INTERRUPTED, Execution, resumed_checkpoint_every,
                               run_benchmark)

    executor = args.executor or os.environ.get(EXECUTOR_ENV) or AUTO_EXECUTOR
    checkpoint_every = args.checkpoint_every
    if checkpoint_every is None and args.resume is not None:  # go on from the killed run's checkpoints
        checkpoint_every = resumed_checkpoint_every(args.resume)
    execution = Execution(executor, args.workers, args.ray_address, args.cell_timeout, checkpoint_every,
                          show_progress=not args.no_progress, seeds_together=args.seeds_together,
                          loggers=tuple(name.strip() for name in (args.loggers or "").split(",") if name.strip()),
                          logger_options=tuple(args.logger_option))
    outcome = run_benchmark(config, registry, execution, say=_say)
    if outcome.status == INTERRUPTED:
        return EXIT_INTERRUPTED
    print(render.text(outcome.report), end="")
    print(f"Results: {outcome.run_dir} (report.md, report.html)")
    return EXIT_CELLS_FAILED if outcome.failed_cells else EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    from bench import render
    from bench.evaluation_run import EvalRequest, evaluate_run
    from bench.session import INTERRUPTED

    request = EvalRequest(args.run_dir, args.out, args.steps, args.episodes, args.test_suites, args.device,
                          show_progress=not args.no_progress)
    outcome = evaluate_run(request, _load_registry(args.strict), say=_say)
    if outcome.status == INTERRUPTED:
        return EXIT_INTERRUPTED
    print(render.text(outcome.report), end="")
    print(f"Results: {outcome.run_dir} (report.md, report.html)")
    return EXIT_CELLS_FAILED if outcome.failed_cells else EXIT_OK


def _print_plan(config, registry) -> int:
    """``bench run --dry-run``: the resolved plan, one row per suite setting and learner; nothing runs."""
    from tabulate import tabulate

    from bench.grid import describe_plan, plan

    cells = plan(config, registry)
    suites = {suite.name: config.make_suite(suite.cls) for suite in registry.select("suite", config.suites)}
    print(tabulate(describe_plan(cells, suites), headers="keys", tablefmt="simple"))
    print(f"{len(cells)} cells, profile {config.profile}; nothing was run (--dry-run)")
    return EXIT_OK


def cmd_describe(args: argparse.Namespace) -> int:
    from bench.config import PROFILES
    from bench.describe import describe

    if args.profile not in PROFILES:
        raise BenchError(f"--profile: unknown profile {args.profile!r}; valid: {', '.join(PROFILES)}")
    registry = _load_registry(args.strict)
    found = [registration for kind in ("learner", "suite") for registration in registry.of_kind(kind).values()
             if registration.name == args.name]
    if not found:
        known = sorted({*registry.of_kind("learner"), *registry.of_kind("suite")})
        raise BenchError(f"no learner or suite named {args.name!r}; installed: {', '.join(known)}")
    print("\n".join(describe(registration, registry, args.profile) for registration in found), end="")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from bench import render
    from bench.report_files import write_report
    from bench.store import RunStore, atomic_write_bytes

    store = RunStore(args.run_dir)
    store.run_info()
    report, figures = write_report(store)
    if args.format is None:
        if args.out is not None:
            raise BenchError("--out needs --format (md, html, latex or csv)")
        print(render.text(report), end="")
        print(f"Report: {store.path / 'report.md'}, {store.path / 'report.html'}")
        return EXIT_OK
    output = {
        "md": lambda: render.markdown(report, list(figures)),
        "html": lambda: render.html_document(report, figures),
        "latex": lambda: render.latex(report),
        "csv": lambda: render.csv(report),
    }[args.format]()
    if args.out is None:
        print(output, end="")
        return EXIT_OK
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.format == "md":
        (args.out.parent / "figures").mkdir(exist_ok=True)
        for name, png in figures.items():
            atomic_write_bytes(args.out.parent / "figures" / name, png)
    atomic_write_bytes(args.out, output.encode())
    print(f"wrote {args.out}", file=sys.stderr)
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    import csv

    from bench import render
    from bench.compare import Run, compare

    table = compare([Run.load(path) for path in args.run_dirs])
    if args.format == "text":
        print(render.text_tables([table]), end="")
    elif args.format == "md":
        print(render.markdown_table(table), end="")
    elif args.format == "latex":
        print(render.latex_table(table), end="")
    else:
        csv.writer(sys.stdout, lineterminator="\n").writerows([table.columns, *table.rows])
    return EXIT_OK


def cmd_runs(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from bench.compare import list_runs

    if not args.results.is_dir():
        raise BenchError(f"no results folder at {args.results}")
    rows = list_runs(args.results)
    print(tabulate(rows, headers="keys", tablefmt="simple") if rows else f"no runs in {args.results}")
    return EXIT_OK


def cmd_db(args: argparse.Namespace) -> int:
    from bench.db import build

    done = build(args.results, args.out, lambda message: _say(f"warning: {message}"))
    print(f"{args.out}: {done}")
    return EXIT_OK


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from bench.leaderboard import write_site

    board = write_site(args.results, args.out, lambda message: _say(f"warning: {message}"))
    print(f"{args.out / 'index.html'}: {len(board)} suite setting(s)")
    return EXIT_OK


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from bench.scaffold import new_plugin

    root = new_plugin(args.name, args.dir, args.kind)
    print(f"created {root}\nnext: cd {root} && pip install -e . && bench plugins && python -m pytest")
    return EXIT_OK


def cmd_data(args: argparse.Namespace) -> int:
    from bench.api import TaskSuite

    registry = _load_registry(args.strict)
    (suite,) = registry.select("suite", [args.suite])
    instructions = suite.cls.data_instructions()
    has_downloader = suite.cls.download.__func__ is not TaskSuite.download.__func__
    if args.download is None:
        fetch = f"bench data {suite.name} --download DIR" if has_downloader else None
        if instructions is None:
            print(f"Fetch it: {fetch}" if fetch else
                  f"{suite.name}: the suite gives no data instructions and has no downloader")
        else:
            print(instructions if fetch is None else f"{instructions}\nOr fetch it: {fetch}")
        return EXIT_OK
    try:
        suite.cls.download(args.download)
    except NotImplementedError as error:
        if instructions is None:
            raise BenchError(str(error)) from None
        print(instructions)
        raise BenchError(f"{error}; stage its data by hand as printed above") from None
    print(f"{suite.name}: data staged in {args.download}; use --data-dir {args.download}")
    return EXIT_OK


def cmd_perf(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from bench.config import resolve_run_config
    from bench.grid import plan

    selection = {_dest(flag): getattr(args, _dest(flag)) for flag, *_ in SELECTION_FLAGS}
    config = resolve_run_config(None, selection | {"profile": args.profile}, args.set)
    registry = _load_registry(args.strict)
    cells = plan(config, registry)

    from bench.perf import as_records, gradient_mismatches, measure_plan
    from bench.runner import resolve_device

    device = resolve_device(config.device)
    rows = measure_plan(cells, config, device, args.iterations, args.warmup, args.eval_episodes, _say)
    records = as_records(rows)
    print(tabulate(records, headers="keys", tablefmt="simple", floatfmt=".4g"))
    if args.json:
        from bench.environment import environment

        args.json.write_text(json.dumps({"environment": environment(registry, device), "rows": records}, indent=2) + "\n")
    mismatched = gradient_mismatches(rows)
    for row in mismatched:
        _say(f"error: {row.learner} on {row.suite}: meta-gradient differs from the reference by {row.gradient_rel_diff:.2e}")
    return EXIT_CELLS_FAILED if mismatched else EXIT_OK


TUNE_KEYS = ("learners", "suites", "shots", "ways", "device", "data_dir", "trials", "trial_tasks", "val_episodes",
             "val_every", "seed", "workers", "population")
"""``bench tune``'s flags that make its configuration (with ``--set`` and ``--out``)."""


def cmd_tune(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from bench.config import parse_set_options
    from bench.session import Execution
    from bench.tune import FINISHED, resumed_tune, run_tune, tune_config
    from bench.tune_study import TUNED_FILE

    given = {key: getattr(args, key) for key in TUNE_KEYS}
    if args.resume is None:
        config = tune_config({**given, "set": parse_set_options(args.set)}, origin="command line")
    else:
        changing = [f"--{key.replace('_', '-')}" for key, value in {**given, "out": args.out, "set": args.set or None}.items()
                    if value is not None]
        if changing:
            raise BenchError(f"--resume takes the configuration from {args.resume / 'tune.json'}; drop {', '.join(changing)}")
        config = resumed_tune(args.resume)
    registry = _load_registry(args.strict)
    outcome = run_tune(config, registry, Execution(args.executor, address=args.ray_address, show_progress=not args.no_progress),
                       args.resume or args.out, resume=args.resume is not None, say=_say)
    if outcome.status != FINISHED:
        return EXIT_INTERRUPTED
    print(tabulate(outcome.summary, headers="keys", tablefmt="simple"))
    print(f"Tuned: {outcome.folder / TUNED_FILE} (report: tuning.md, tuning.html); "
          f"use it: bench run --config {outcome.folder / TUNED_FILE}")
    return EXIT_OK


COMMANDS = {"tune": cmd_tune, "run": cmd_run, "eval": cmd_eval, "plugins": cmd_plugins, "report": cmd_report, "data": cmd_data, "perf": cmd_perf,
            "compare": cmd_compare, "runs": cmd_runs, "new-plugin": cmd_new_plugin, "describe": cmd_describe,
            "db": cmd_db, "leaderboard": cmd_leaderboard}


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (what ``timeout``, schedulers and ``kill`` send) interrupts as Ctrl-C does: a run or a tune keeps what
    finished, is marked interrupted and says how to resume. Main thread only (where Python delivers signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> NoReturn:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with terminate_as_interrupt():
            return COMMANDS[args.command](args)
    except BenchError as error:
        print(f"bench {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
