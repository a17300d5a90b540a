"""The ``bench`` command. Heavy imports (torch, plugins) happen inside the subcommands that need them."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.errors import BenchError

REPORT_FORMATS = ("md", "html", "latex", "csv")

EXIT_OK, EXIT_CELLS_FAILED, EXIT_USAGE = 0, 1, 2


def _add_plugin_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strict", action="store_true", help="fail when any plugin fails to load")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description="metabench: benchmark few-shot meta-learners under one paired episodic protocol.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="meta-train and evaluate learners on suites", description="Meta-train and evaluate every learner on every suite setting, then print the summary tables.")
    run.add_argument("--learners", help="'all' or comma-separated learner names (default: all)")
    run.add_argument("--suites", help="'all' or comma-separated suite names (default: sinusoid)")
    run.add_argument("--profile", help="budget profile: smoke, quick (default) or paper")
    run.add_argument("--seeds", help="number of seeds, 0..N-1 (default: 1)")
    run.add_argument("--shots", help="only the settings with these shots, comma-separated (default: all)")
    run.add_argument("--ways", help="only the settings with these ways, comma-separated (classification suites)")
    run.add_argument("--steps", help="adaptation steps at test time (default: the profile's, 10)")
    run.add_argument("--episodes", help="test episodes per cell (default: the profile's)")
    run.add_argument("--tasks", help="meta-training budget per cell in tasks seen (default: the profile's)")
    run.add_argument("--device", help="auto (default: CUDA when present), cpu or cuda")
    run.add_argument("--out", help="run folder (default: results/<time>-<suites>-<profile>); an existing run folder of the same configuration is resumed")
    run.add_argument("--data-dir", help="where suites look for their data sets (default: $METABENCH_DATA_DIR)")
    run.add_argument("--config", type=Path, help="TOML or YAML file with the same keys as these flags (flags win)")
    run.add_argument("--set", action="append", default=[], metavar="LEARNER.KEY=VALUE", help="override a learner hyper-parameter, e.g. maml.inner_lr=0.01 (repeatable)")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR", help="finish an interrupted run: its configuration from RUN_DIR/run.json; finished cells are kept, failed ones run again")
    run.add_argument("--executor", default="inline", help="how cells run: inline (default, one at a time here), processes (--workers on this machine), ray (a Ray cluster), or a plugin's")
    run.add_argument("--workers", type=int, default=None, help="cells at a time for processes / a local Ray (default: CPU cores for processes)")
    run.add_argument("--ray-address", help="the Ray cluster to use (default: start a local Ray for the run)")
    run.add_argument("--cell-timeout", type=float, metavar="SECONDS", help="fail a cell that runs longer (the run goes on)")
    run.add_argument("--checkpoint-every", type=int, metavar="TASKS", help="save a cell's meta-training state every TASKS tasks, so that a killed cell resumes near where it stopped (learners that support it)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_plugin_flags(run)

    plugins = sub.add_parser("plugins", help="list installed learners and suites", description="List every registered learner and suite and any plugin that failed to load.")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    _add_plugin_flags(plugins)

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

    perf = sub.add_parser("perf", help="time meta-training and evaluation, beside reference implementations",
                          description="Meta-training tasks/s, peak memory and evaluation episodes/s of learners on one "
                                      "setting per suite; learners with a reference implementation (maml, fomaml, metasgd: "
                                      "learn2learn's MAML and MetaSGD) are timed beside it and checked for the same meta-gradient.")
    perf.add_argument("--learners", default="maml,fomaml,adaptation-layer,finetune", help="learners to time (default: %(default)s)")
    perf.add_argument("--suites", default="sinusoid,omniglot", help="suites (default: %(default)s; a suite without its data is skipped with a warning)")
    perf.add_argument("--shots", default="10,1", help="pick each suite's first setting with these shots (default: %(default)s)")
    perf.add_argument("--ways", default="5", help="... and these ways, for classification (default: %(default)s)")
    perf.add_argument("--data-dir", help="where suites find their data (default: $METABENCH_DATA_DIR)")
    perf.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    perf.add_argument("--iterations", type=int, default=20, help="timed meta-training iterations per learner (default: 20)")
    perf.add_argument("--warmup", type=int, default=3, help="untimed first iterations (default: 3)")
    perf.add_argument("--eval-episodes", type=int, default=100, help="test episodes timed per learner (default: 100)")
    perf.add_argument("--set", action="append", default=[], metavar="LEARNER.KEY=VALUE", help="hyper-parameter override (repeatable)")
    perf.add_argument("--json", type=Path, metavar="FILE", help="also write the rows as JSON")
    _add_plugin_flags(perf)

    scaffold = sub.add_parser("new-plugin", help="create a learner plugin package to start from",
                              description="Write metabench-NAME/: pyproject.toml with the entry point, a working template "
                                          "learner, its hook, and a conformance test (see docs/writing-a-plugin.md).")
    scaffold.add_argument("name", help="the learner's name, e.g. my-learner")
    scaffold.add_argument("--dir", type=Path, default=Path("."), help="where to create the package folder (default: .)")

    data = sub.add_parser("data", help="fetch a suite's data set", description="Download and stage a suite's data set (where the suite has a downloader).")
    data.add_argument("suite", help="suite name, e.g. omniglot")
    data.add_argument("--download", type=Path, required=True, metavar="DIR", help="data folder to stage into; then run with --data-dir DIR")
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

    registry = _load_registry(args.strict)
    entries = [
        {"kind": reg.kind, "name": reg.name, "description": reg.description, "unavailable": reg.unavailable_reason,
         "plugin": reg.source.name, "distribution": reg.source.distribution, "version": reg.source.version}
        for kind in ("learner", "suite", "executor") for _, reg in sorted(registry.of_kind(kind).items())
    ]
    problems = [{"plugin": p.source.name, "target": p.source.target, "distribution": p.source.distribution, "problem": p.message}
                for p in registry.problems]
    if args.json:
        print(json.dumps({"plugins": entries, "problems": problems}, indent=2))
        return EXIT_OK
    rows = [[e["kind"], e["name"], f"unavailable: {e['unavailable']}" if e["unavailable"] else e["description"],
             f"{e['plugin']} ({e['distribution']} {e['version']})"] for e in entries]
    print(tabulate(rows, headers=["kind", "name", "description", "plugin"], tablefmt="simple"))
    if problems:
        print("\nPlugins that failed to load:")
        for problem in registry.problems:
            print(f"  {problem}")
    return EXIT_OK


def _run_config(args: argparse.Namespace):
    """The file's values (validated alone, so errors name the file), then the given flags on top."""
    from bench.config import (
        ConfigError,
        build_run_config,
        parse_set_option,
        read_config_file,
    )

    values: dict[str, Any] = {}
    if args.resume:
        return _resumed_config(args)
    if args.config:
        values = read_config_file(args.config)
        build_run_config(values, origin=f"config file {args.config}")
    for key in ("learners", "suites", "profile", "seeds", "shots", "ways", "steps", "episodes", "tasks", "device", "out", "data_dir"):
        given = getattr(args, key)
        if given is not None:
            values[key] = given
    if args.set:
        table = values.setdefault("set", {})
        for option in args.set:
            learner, key, value = parse_set_option(option)
            if not isinstance(table.get(learner, {}), dict):
                raise ConfigError(f"set.{learner}: expected a table of hyper-parameters")
            table.setdefault(learner, {})[key] = value
    return build_run_config(values, origin="command line")


CONFIG_FLAGS = ("learners", "suites", "profile", "seeds", "shots", "ways", "steps", "episodes", "tasks", "device",
                "out", "data_dir", "config")


def _resumed_config(args: argparse.Namespace):
    """The configuration a run folder was started with; flags that would change it are refused."""
    import dataclasses

    from bench.config import RunConfig, build_run_config
    from bench.store import RunStore

    given = [f"--{key.replace('_', '-')}" for key in CONFIG_FLAGS if getattr(args, key) is not None] + (["--set"] if args.set else [])
    if given:
        raise BenchError(f"--resume takes the configuration from {args.resume / 'run.json'}; drop {', '.join(given)}")
    stored = RunStore(args.resume).run_info().get("config", {})
    keys = {field.name for field in dataclasses.fields(RunConfig)}
    return build_run_config({key: value for key, value in stored.items() if key in keys} | {"out": str(args.resume)},
                            origin=f"{args.resume / 'run.json'}")


def _executor(args: argparse.Namespace, registry):
    import os

    from bench.executors import ExecutorOptions

    if args.workers is not None and args.workers < 1:
        raise BenchError(f"--workers must be at least 1, got {args.workers}")
    if args.cell_timeout is not None and args.cell_timeout <= 0:
        raise BenchError(f"--cell-timeout must be positive, got {args.cell_timeout:g}")
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise BenchError(f"--checkpoint-every must be at least 1 task, got {args.checkpoint_every}")
    (registration,) = registry.select("executor", [args.executor])
    workers = args.workers or (os.cpu_count() or 1)
    return registration.cls(ExecutorOptions(workers=workers, address=args.ray_address))


def cmd_run(args: argparse.Namespace) -> int:
    config = _run_config(args)
    registry = _load_registry(args.strict)
    executor = _executor(args, registry)

    import dataclasses

    from bench.grid import plan

    cells = plan(config, registry)
    for kind, names in (("learner", config.learners), ("suite", config.suites)):
        if list(names) == ["all"]:
            for name, reason in registry.unavailable(kind).items():
                print(f"note: skipping {kind} '{name}': {reason}", file=sys.stderr)
    if list(config.learners) == ["all"]:
        named_only = sorted(name for name, registration in registry.learners.items()
                            if not registration.cls.in_all and not registration.unavailable_reason)
        if named_only:
            print(f"note: not in 'all', run when named: {', '.join(named_only)}", file=sys.stderr)
    suites = {cell.suite.name: cell.suite for cell in cells}.values()
    for suite in suites:  # data problems: one line, before any work
        config.make_suite(suite.cls).prepare()

    from bench.environment import environment
    from bench.runner import default_run_dir, resolve_device, run_cells
    from bench.store import RunStore

    device = resolve_device(config.device)
    run_dir = Path(config.out) if config.out else default_run_dir(config)
    resolved = {
        **dataclasses.asdict(config), "out": str(run_dir),
        "budgets": {suite.name: dataclasses.asdict(config.budget_for(suite.cls)) for suite in suites},
        "hyperparameters": {f"{c.learner.name} @ {c.suite.name} {c.setting.name}": dataclasses.asdict(c.hyperparameters) for c in cells},
    }
    store = RunStore(run_dir)
    env = {**environment(registry, device),
           "execution": {"executor": args.executor, "workers": executor.options.workers, "cell_timeout": args.cell_timeout,
                         "checkpoint_every": args.checkpoint_every}}
    store.open(resolved, env)

    def on_start(finished: int) -> None:
        print(f"metabench: {len(cells)} cells ({finished} already finished) on {env['device_name']} "
              f"with the {args.executor} executor -> {run_dir}", file=sys.stderr)

    def on_cell(cell, metadata: dict[str, Any]) -> None:
        status = metadata["status"]
        detail = f": {metadata['error']}" if status != "ok" else f" ({metadata['meta_train_seconds']:.1f} s meta-training)"
        print(f"  {status:6} {cell.label}{detail}", file=sys.stderr)

    try:
        run_cells(cells, config, store, device, show_progress=not args.no_progress, executor=executor,
                  cell_timeout=args.cell_timeout, checkpoint_every=args.checkpoint_every,
                  warn=lambda message: print(f"warning: {message}", file=sys.stderr), on_start=on_start, on_cell=on_cell)
    except KeyboardInterrupt:
        store.write_run_file(resolved, env, status="interrupted")
        print(f"\ninterrupted: finished cells are kept in {run_dir}; resume with: bench run --resume {run_dir}",
              file=sys.stderr)
        return 130
    failed = store.failed_cells()
    store.write_run_file(resolved, env, status="finished" if not failed else "finished with failed cells")
    report, _ = _write_report(store)
    from bench import render

    print(render.text(report), end="")
    print(f"Results: {run_dir} (report.md, report.html)")
    return EXIT_CELLS_FAILED if failed else EXIT_OK


def _write_report(store):
    """Aggregate a run folder's cells; write records.csv and the report files into it; return the report."""
    from bench import plots, render
    from bench.report import Report

    records = store.records()
    report = Report(records, store.cells(), store.run_info())
    figures = plots.figures(report)
    store.write_report(records, {
        "report.md": render.markdown(report, list(figures)),
        "report.html": render.html_document(report, figures),
        "summary.csv": render.csv(report),
        **{f"figures/{name}": png for name, png in figures.items()},
    })
    return report, figures


def cmd_report(args: argparse.Namespace) -> int:
    from bench import render
    from bench.store import RunStore, atomic_write_bytes

    store = RunStore(args.run_dir)
    store.run_info()
    report, figures = _write_report(store)
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


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from bench.scaffold import new_plugin

    root = new_plugin(args.name, args.dir)
    print(f"created {root}\nnext: cd {root} && pip install -e . && bench plugins && python -m pytest")
    return EXIT_OK


def cmd_data(args: argparse.Namespace) -> int:
    registry = _load_registry(args.strict)
    (suite,) = registry.select("suite", [args.suite])
    try:
        suite.cls.download(args.download)
    except NotImplementedError as error:
        raise BenchError(str(error)) from None
    print(f"{suite.name}: data staged in {args.download}; use --data-dir {args.download}")
    return EXIT_OK


def cmd_perf(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from bench.config import build_run_config, parse_set_option
    from bench.errors import DataError
    from bench.grid import plan

    overrides: dict[str, dict[str, str]] = {}
    for option in args.set:
        learner, key, value = parse_set_option(option)
        overrides.setdefault(learner, {})[key] = value
    config = build_run_config({"learners": args.learners, "suites": args.suites, "shots": args.shots, "ways": args.ways,
                               "data_dir": args.data_dir, "device": args.device, "set": overrides}, origin="bench perf")
    registry = _load_registry(args.strict)
    cells = plan(config, registry)

    from bench.perf import GRADIENT_TOLERANCE, as_records, measure
    from bench.runner import resolve_device

    device = resolve_device(config.device)
    rows, suites_done = [], {}
    for cell in cells:
        key = (cell.suite.name, cell.learner.name)
        if key in suites_done or suites_done.get(cell.suite.name) is False:
            continue  # one setting per suite: the first that matches
        suite = config.make_suite(cell.suite.cls)
        try:
            suite.prepare()
        except DataError as error:
            print(f"warning: skipping suite '{cell.suite.name}': {error}", file=sys.stderr)
            suites_done[cell.suite.name] = False
            continue
        suites_done[key] = True
        print(f"timing {cell.learner.name} on {cell.suite.name} {cell.setting.name} ...", file=sys.stderr)
        rows.extend(measure(cell, suite, device, args.iterations, args.warmup, args.eval_episodes))
    records = as_records(rows)
    print(tabulate(records, headers="keys", tablefmt="simple", floatfmt=".4g"))
    if args.json:
        from bench.environment import environment

        args.json.write_text(json.dumps({"environment": environment(registry, device), "rows": records}, indent=2) + "\n")
    mismatched = [r for r in rows if r.gradient_rel_diff is not None and r.gradient_rel_diff > GRADIENT_TOLERANCE]
    for row in mismatched:
        print(f"error: {row.learner} on {row.suite}: meta-gradient differs from the reference by {row.gradient_rel_diff:.2e}", file=sys.stderr)
    return EXIT_CELLS_FAILED if mismatched else EXIT_OK


COMMANDS = {"run": cmd_run, "plugins": cmd_plugins, "report": cmd_report, "data": cmd_data, "perf": cmd_perf,
            "compare": cmd_compare, "runs": cmd_runs, "new-plugin": cmd_new_plugin}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except BenchError as error:
        print(f"bench {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
