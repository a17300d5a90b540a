"""``bench db``: the database of a results folder built from real runs (plain, resumed, with failed cells) and a real
tune; incremental updates, one transaction per run, unreadable folders, the documented queries, pandas, Datasette.

``make_results`` (also used by test_leaderboard.py) makes the run folders with ``bench.cli.main``, once per module."""
from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from helpers import TROUBLE, readme_sql

from bench import cli, db
from bench.plugins import NO_AUTOLOAD_ENV

SMOKE = ("--suites", "sinusoid", "--profile", "smoke", "--tasks", "50", "--episodes", "5", "--steps", "2",
         "--no-progress")

BEST_PER_SETTING, ACROSS_VERSIONS, _ = readme_sql()
"""The README's example queries: the best learner per suite setting and budget; a learner's numbers across metabench
versions (for maml there; for reptile here)."""


def _install_trouble(site: Path) -> None:
    """The ``trouble`` learner (tests/helpers.py) as an installed-looking distribution on ``site``."""
    (site / "trouble_plugin.py").write_text(textwrap.dedent(TROUBLE.replace("SLEEP", "0")))
    info = site / "trouble-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: trouble\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[metabench]\ntrouble = trouble_plugin\n")


def make_results(root: Path) -> Path:
    """A results folder of real runs: ``plain`` (reptile and finetune), ``resumed`` (finetune, 2 seeds, one cell run
    again by ``--resume``), ``nested/failed`` (trouble: 2 of its 4 cells fail) and ``tune`` (finetune, 2 trials)."""
    results = root / "results"
    assert cli.main(["run", "--learners", "reptile,finetune", "--shots", "5", "--seeds", "1", *SMOKE,
                     "--out", str(results / "plain")]) == 0
    resumed = results / "resumed"
    assert cli.main(["run", "--learners", "finetune", "--shots", "5", "--seeds", "2", *SMOKE, "--out", str(resumed)]) == 0
    (next((resumed / "cells").glob("*seed1.json"))).unlink()
    assert cli.main(["run", "--resume", str(resumed)]) == 0
    site = root / "trouble-site"
    site.mkdir()
    _install_trouble(site)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(site))
        patch.setenv(NO_AUTOLOAD_ENV, "0")
        assert cli.main(["run", "--learners", "trouble", "--shots", "5,10", "--seeds", "2", *SMOKE,
                         "--out", str(results / "nested" / "failed")]) == 1
    sys.modules.pop("trouble_plugin", None)
    assert cli.main(["tune", "--learners", "finetune", "--suites", "sinusoid", "--shots", "5", "--trials", "2",
                     "--trial-tasks", "20", "--val-episodes", "5", "--no-progress",
                     "--out", str(results / "tune")]) == 0
    return results


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return make_results(tmp_path_factory.mktemp("db"))


@pytest.fixture
def results(built: Path, tmp_path: Path) -> Path:
    """A copy of the module's results folder, for a test to change."""
    return Path(shutil.copytree(built, tmp_path / "results"))


def query(database: Path, sql: str, *parameters) -> list[tuple]:
    with sqlite3.connect(database) as connection:
        return connection.execute(sql, parameters).fetchall()


def test_every_run_and_tune_folder_is_in_the_database(built, tmp_path, capsys):
    database = tmp_path / "results.db"
    assert cli.main(["db", str(built), "--out", str(database)]) == 0
    assert capsys.readouterr().err == ""
    runs = {path: rest for path, *rest in query(database, "SELECT path, kind, status, resumes, config_hash FROM runs")}
    assert {path: kind for path, (kind, *_) in runs.items()} == {
        "plain": "run", "resumed": "run", "nested/failed": "run", "tune": "tune"}
    assert runs["resumed"][2] == 1 and runs["plain"][2] == 0
    assert runs["plain"][3] == json.loads((built / "plain" / "run.json").read_text())["config_hash"]
    failed = query(database, "SELECT setting, seed, error FROM cells WHERE run = 'nested/failed' AND status = 'failed'")
    assert sorted(failed) == [("K=10", 0, "NonFiniteLossError: training loss became nan after 50 tasks"),
                              ("K=5", 1, "RuntimeError: exploded on purpose")]
    (hyperparameters,) = query(database, "SELECT hyperparameters FROM cells WHERE run = 'plain' AND learner = 'reptile'")[0]
    assert json.loads(hyperparameters)["inner_lr"] > 0
    for run in ("plain", "resumed", "nested/failed"):
        cells = [json.loads(path.read_text()) for path in (built / run / "cells").glob("*.json")]
        expected = sum(cell["record_rows"] or 0 for cell in cells if cell["status"] == "ok")
        assert query(database, "SELECT count(*) FROM records WHERE run = ?", run) == [(expected,)]
        val_rows = sum(len(pd.read_csv(path)) for path in (built / run / "cells").glob("*.val.csv"))
        assert query(database, "SELECT count(*) FROM val_curves WHERE run = ?", run) == [(val_rows,)] and val_rows
    assert dict(query(database, "SELECT key, value FROM provenance WHERE run = 'plain'"))["plugins.learners"].startswith("metabench")
    trials = query(database, "SELECT learner, trial, state, params FROM tuning_trials WHERE run = 'tune' ORDER BY trial")
    assert [(learner, trial) for learner, trial, *_ in trials] == [("finetune", 0), ("finetune", 1)]
    assert all(state in ("complete", "pruned") and "pretrain_lr" in json.loads(params) for *_, state, params in trials)


def test_results_are_the_reports_headline_numbers(built, tmp_path):
    database = tmp_path / "results.db"
    db.build(built, database, warn=pytest.fail)
    for run in ("plain", "resumed"):
        summary = pd.read_csv(built / run / "summary.csv")
        summary = summary[summary["final_step"]].set_index("learner")
        stored = pd.read_sql("SELECT learner, mean, ci95, seed_ci95 FROM results WHERE run = ?", sqlite3.connect(database),
                             params=(run,)).set_index("learner")
        assert list(stored.index) == sorted(stored.index, key=lambda learner: summary.loc[learner, "selected_mean"])
        pd.testing.assert_series_equal(stored["mean"], summary.loc[stored.index, "selected_mean"], check_names=False)
        pd.testing.assert_series_equal(stored["ci95"], summary.loc[stored.index, "selected_ci95"], check_names=False)


def test_a_second_build_skips_unchanged_folders_replaces_changed_ones_and_drops_vanished_ones(results, tmp_path):
    database = tmp_path / "results.db"
    first = db.build(results, database, warn=pytest.fail)
    assert sorted(first.added) == ["nested/failed", "plain", "resumed", "tune"]
    assert db.build(results, database, warn=pytest.fail).unchanged == first.added
    run_file = results / "resumed" / "run.json"
    info = json.loads(run_file.read_text())
    run_file.write_text(json.dumps({**info, "status": "interrupted"}))
    shutil.rmtree(results / "plain")
    again = db.build(results, database, warn=pytest.fail)
    assert (again.updated, again.removed, sorted(again.unchanged)) == (["resumed"], ["plain"], ["nested/failed", "tune"])
    assert query(database, "SELECT status FROM runs WHERE path = 'resumed'") == [("interrupted",)]
    for table in db.SCHEMA:
        column = "path" if table == "runs" else "run"
        assert query(database, f"SELECT count(*) FROM {table} WHERE {column} = 'plain'") == [(0,)], table


def test_a_database_of_another_schema_is_built_anew(results, tmp_path):
    database = tmp_path / "results.db"
    first = db.build(results, database, warn=pytest.fail)
    with sqlite3.connect(database) as connection:  # as a database written by an earlier metabench
        connection.execute("UPDATE db_info SET value = 'an older schema' WHERE key = 'schema'")
        connection.execute("CREATE TABLE gone (x)")
    again = db.build(results, database, warn=pytest.fail)
    assert sorted(again.added) == sorted(first.added) and not again.unchanged
    assert query(database, "SELECT name FROM sqlite_master WHERE name = 'gone'") == []
    assert query(database, "SELECT count(*) FROM runs") == [(len(first.added),)]


def test_a_changed_run_is_replaced_in_one_transaction(results, tmp_path, monkeypatch):
    database = tmp_path / "results.db"
    db.build(results, database, warn=pytest.fail)
    before = query(database, "SELECT count(*) FROM records WHERE run = 'plain'")
    (results / "plain" / "run.json").touch()
    insert = db._insert

    def fail_on_records(connection, table, rows):
        if table == "records":
            raise sqlite3.OperationalError("disk I/O error")
        insert(connection, table, rows)

    monkeypatch.setattr(db, "_insert", fail_on_records)
    with pytest.raises(sqlite3.OperationalError):
        db.build(results, database, warn=pytest.fail)
    assert query(database, "SELECT count(*) FROM records WHERE run = 'plain'") == before != [(0,)]
    assert query(database, "SELECT count(*) FROM runs WHERE path = 'plain'") == [(1,)]


def test_an_unreadable_folder_is_named_in_one_warning_and_the_rest_is_built(results, tmp_path, capsys):
    database = tmp_path / "results.db"
    assert cli.main(["db", str(results), "--out", str(database)]) == 0
    (results / "plain" / "run.json").write_text("{ not json")
    records = next(path for path in (results / "resumed" / "cells").glob("*seed0.csv"))
    records.write_text(records.read_text()[:40])
    shutil.copytree(results / "nested" / "failed", results / "late")
    (next((results / "late" / "cells").glob("*.json"))).write_text("[]")
    (results / "tune" / "study.db").write_bytes(b"not SQLite " * 100)
    capsys.readouterr()
    assert cli.main(["db", str(results), "--out", str(database)]) == 0
    late, plain, resumed, tune = sorted(capsys.readouterr().err.splitlines())
    assert late.startswith(f"warning: skipped {results / 'late'}: {results / 'late' / 'cells'}")
    assert plain.startswith(f"warning: skipped {results / 'plain'}: {results / 'plain' / 'run.json'} is unreadable")
    assert resumed.startswith(f"warning: skipped {results / 'resumed'}: {records} lacks the columns metric")
    assert tune.startswith(f"warning: skipped {results / 'tune'}: {results / 'tune' / 'study.db'} is unreadable "
                           "(DatabaseError: file is not a database)")
    assert "keeps what it held" not in late and all("keeps what it held" in line for line in (plain, resumed, tune))
    paths = {path for (path,) in query(database, "SELECT path FROM runs")}
    assert paths == {"plain", "resumed", "nested/failed", "tune"}  # the earlier rows of plain, resumed, tune are kept
    assert query(database, "SELECT count(*) FROM records WHERE run = 'plain'") != [(0,)]


def test_a_tune_killed_before_its_first_trial_is_indexed_without_creating_its_study(results, tmp_path):
    fresh = results / "fresh-tune"
    fresh.mkdir()
    shutil.copy(results / "tune" / "tune.json", fresh)
    database = tmp_path / "results.db"
    db.build(results, database, warn=pytest.fail)
    assert [path.name for path in fresh.iterdir()] == ["tune.json"]
    assert query(database, "SELECT kind, (SELECT count(*) FROM tuning_trials WHERE run = path) FROM runs "
                           "WHERE path = 'fresh-tune'") == [("tune", 0)]


@pytest.mark.parametrize("content", [b"not a database at all, just text\n" * 4, None])
def test_an_out_file_that_is_no_bench_database_is_refused_and_left_alone(built, tmp_path, capsys, content):
    database = tmp_path / "other.db"
    if content is None:  # someone else's SQLite database
        with sqlite3.connect(database) as connection:
            connection.execute("CREATE TABLE mine (x)")
    else:
        database.write_bytes(content)
    before = database.read_bytes()
    assert cli.main(["db", str(built), "--out", str(database)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"bench db: error: {database}") and error.count("\n") == 1
    assert database.read_bytes() == before


def test_a_missing_results_folder_is_one_line(tmp_path, capsys):
    assert cli.main(["db", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.db")]) == 2
    assert capsys.readouterr().err == f"bench db: error: no results folder at {tmp_path / 'nowhere'}\n"
    assert not (tmp_path / "x.db").exists()


def test_the_documented_queries_answer_in_sqlite_and_pandas(results, tmp_path):
    older = results / "older"
    shutil.copytree(results / "plain", older)
    info = json.loads((older / "run.json").read_text())
    info["environment"]["metabench"] = "0.0.9"
    (older / "run.json").write_text(json.dumps(info))
    database = tmp_path / "results.db"
    db.build(results, database, warn=pytest.fail)
    best = pd.read_sql(BEST_PER_SETTING, sqlite3.connect(database))
    everything = pd.read_sql("SELECT * FROM results", sqlite3.connect(database))
    budget = ["suite", "setting", "task_budget", "test_episodes"]
    for (suite, setting, tasks, episodes), rows in everything.groupby(budget):
        (row,) = best[(best[budget] == (suite, setting, tasks, episodes)).all(axis=1)].itertuples()
        assert row.mean == rows["mean"].min()  # sinusoid: MSE, lower is better
    assert len(best) == len(everything[budget].drop_duplicates()) and set(best["setting"]) == {"K=5", "K=10"}
    across = pd.read_sql(ACROSS_VERSIONS.replace("'maml'", "'reptile'"), sqlite3.connect(database))
    version = json.loads((results / "plain" / "run.json").read_text())["environment"]["metabench"]
    assert list(across["metabench"]) == ["0.0.9", version] and across["mean"].nunique() == 1  # the same cells twice


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_datasette_serves_the_database(built, tmp_path):
    pytest.importorskip("datasette", reason="the db extra: pip install -e '.[db]'")
    database = tmp_path / "results.db"
    db.build(built, database, warn=pytest.fail)
    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("datasette")), "serve", str(database),
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}/results/cells.json?_shape=array&_size=max"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    cells = json.loads(response.read())
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()
                assert time.monotonic() < deadline, "datasette did not answer within 30 s"
                time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert sorted(cell["cell_id"] for cell in cells) == sorted(cell for (cell,) in query(database, "SELECT cell_id FROM cells"))
    assert {cell["status"] for cell in cells} == {"ok", "failed"}
