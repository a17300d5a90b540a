"""``bench leaderboard``: a self-contained site from real run folders (test_db.make_results, plus a run with the tuned
hyper-parameters): every link resolves inside the site (also once moved), no URL leaves it, the best run per learner
is chosen by the reports' own numbers in the metric's direction, among the runs of the same budget only."""
from __future__ import annotations

import dataclasses
import html.parser
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pandas as pd
import pytest
from test_db import SMOKE, make_results

from bench import cli
from bench.headline import Headline
from bench.leaderboard import Budget, RunPage, index_html, leaderboard


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    results = make_results(tmp_path_factory.mktemp("leaderboard"))
    assert cli.main(["run", "--config", str(results / "tune" / "tuned.toml"), "--seeds", "1", *SMOKE,
                     "--out", str(results / "tuned")]) == 0
    return results


@pytest.fixture(scope="module")
def site(results, tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site") / "site"
    assert cli.main(["leaderboard", str(results), "--out", str(site)]) == 0
    return site


class Page(html.parser.HTMLParser):
    """A page's links (every href and src) and tables (rows of (text, href or None) cells, header row first)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.links: list[str] = []
        self.tables: list[list[list[tuple[str, str | None]]]] = []
        self._cell: list[str] | None = None
        self._href: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.links += [value for name, value in attrs if name in ("href", "src") and value]
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell, self._href = [], None
        elif tag == "a" and self._cell is not None:
            self._href = values.get("href")

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self.tables[-1][-1].append(("".join(self._cell or []), self._href))
            self._cell = None

    def frames(self) -> list[pd.DataFrame]:
        """The tables, each cell a (text, href) pair, columns named by the header's text."""
        return [pd.DataFrame(rows[1:], columns=[text for text, _ in rows[0]]) for rows in self.tables]


def broken_links(site: Path) -> list[str]:
    """The links of the site's pages that do not name a file inside the site (data: URIs are inside the page)."""
    broken = []
    for page in site.rglob("*.html"):
        for link in Page(page.read_text()).links:
            if link.startswith("data:"):
                continue
            target = (page.parent / unquote(urlsplit(link).path)).resolve()
            if urlsplit(link).scheme or not target.is_file() or not target.is_relative_to(site.resolve()):
                broken.append(f"{page.relative_to(site)}: {link}")
    return broken


def test_every_link_resolves_inside_the_site_also_once_moved(site, tmp_path):
    pages = sorted(path.relative_to(site).as_posix() for path in site.rglob("*.html"))
    assert pages == ["index.html", "runs/nested/failed/report.html", "runs/plain/report.html",
                     "runs/resumed/report.html", "runs/tuned/report.html"]
    assert broken_links(site) == []
    for page in site.rglob("*.html"):
        text = page.read_text()
        assert "http://" not in text and "https://" not in text, page
    moved = Path(shutil.move(site, tmp_path / "elsewhere"))
    assert broken_links(moved) == [] and len(list(moved.rglob("*.html"))) == len(pages)
    shutil.move(moved, site)


def test_each_learner_has_its_best_run_with_the_reports_numbers(results, site):
    index = (site / "index.html").read_text()
    k5, k10, runs = Page(index).frames()  # settings in the suite's order, all runs of one budget
    for setting in ("K=5", "K=10"):
        assert f"<h2>sinusoid {setting}, 50 meta-training tasks, 5 test episodes per cell: MSE" in index
    texts = k5.map(lambda cell: cell[0])
    finetune = {}
    for run in ("plain", "resumed", "tuned"):
        summary = pd.read_csv(results / run / "summary.csv")
        finetune[run] = summary[summary["final_step"] & (summary["learner"] == "finetune")]["selected_mean"].item()
    best = min(finetune, key=finetune.get)  # sinusoid: MSE, lower is better
    row = texts[texts["learner"] == "finetune"].iloc[0]
    assert row["run"] == best
    assert row["mean ± 95% CI"].startswith(f"{finetune[best]:.3g} ± ")
    assert row["tuning"] == ("tuned: 2 trials x 20 tasks" if best == "tuned" else "defaults")
    means = [float(text.split(" ± ")[0]) for text in texts["mean ± 95% CI"]]
    assert sorted(texts["learner"]) == ["finetune", "reptile", "trouble"] and means == sorted(means)
    trouble = k10[k10["learner"].map(lambda cell: cell[0]) == "trouble"].iloc[0]
    assert trouble["seeds"][0] == "1 of 2"
    assert trouble["run"] == ("nested/failed", "runs/nested/failed/report.html")
    assert sorted(text for text, _ in runs["run"]) == ["nested/failed", "plain", "resumed", "tuned"]


def headline(learner: str, mean: float, lower_is_better: bool, tasks: int = 100, test_episodes: int = 600) -> Headline:
    return Headline("omniglot", "5-way 1-shot", 0, learner, "accuracy", lower_is_better, mean, 0.01, mean,
                    test_episodes, 0, [mean], None, 1, 1, [1], tasks, test_episodes, 10, 1)


def test_a_cross_domain_result_of_a_tuned_learner_says_tuned():
    """The tuned table names the meta-training suite's setting; the cross-domain row's suite is the pair's label."""
    info = {"config": {"tuned": {"trials": 2, "trial_tasks": 20,
                                 "hyperparameters": {"maml": {"omniglot 5-way 1-shot": {"inner_lr": 0.3}}}}}}
    page = RunPage("run", info, [])
    for suite in ("omniglot", "omniglot→digits"):
        tuned = page.tuning(dataclasses.replace(headline("maml", 0.9, False), suite=suite))
        assert tuned == "tuned: 2 trials x 20 tasks"
    assert page.tuning(headline("anil", 0.9, False)) == "defaults"


@pytest.mark.parametrize("lower_is_better, best, order", [
    (False, "b", ["maml", "anil", "protonet", "diverged"]), (True, "a", ["maml", "protonet", "anil", "diverged"])])
def test_best_follows_the_metrics_direction(lower_is_better, best, order):
    fixed = [headline("protonet", 0.5, lower_is_better), headline("anil", 0.6, lower_is_better),
             headline("diverged", float("nan"), lower_is_better)]
    runs = [RunPage(name, {}, [headline("maml", mean, lower_is_better), *fixed])
            for name, mean in (("a", 0.4), ("b", 0.9), ("c", float("nan")))]
    ((_, budgets),) = leaderboard(runs).items()
    ((_, entries),) = budgets.items()
    assert [entry.headline.learner for entry in entries] == order
    assert entries[0].run.path == best


def test_runs_of_different_budgets_are_ranked_apart_largest_budget_first(tmp_path):
    smoke = RunPage("smoke", {}, [headline("maml", 0.9, False, tasks=50, test_episodes=5),
                                  headline("protonet", 0.3, False, tasks=50, test_episodes=5)])
    full = RunPage("full", {}, [headline("maml", 0.6, False), headline("protonet", 0.7, False)])
    fewer_episodes = RunPage("fewer-episodes", {}, [headline("maml", 0.8, False, test_episodes=100)])
    other_setting = RunPage("other", {}, [dataclasses.replace(headline("maml", 0.5, False), setting="5-way 5-shot",
                                                              setting_index=1)])
    board = leaderboard([smoke, other_setting, fewer_episodes, full])
    assert list(board) == [("omniglot", "5-way 1-shot"), ("omniglot", "5-way 5-shot")]
    tables = board["omniglot", "5-way 1-shot"]
    assert list(tables) == [Budget(100, 600), Budget(100, 100), Budget(50, 5)]
    assert [(entry.headline.learner, entry.run.path) for entry in tables[Budget(100, 600)]] == [
        ("protonet", "full"), ("maml", "full")]
    assert [(entry.headline.learner, entry.run.path) for entry in tables[Budget(100, 100)]] == [
        ("maml", "fewer-episodes")]
    assert [(entry.headline.learner, entry.run.path) for entry in tables[Budget(50, 5)]] == [
        ("maml", "smoke"), ("protonet", "smoke")]
    page = index_html(tmp_path, [smoke, full], board)
    headings = [line.split("</h2>")[0].removeprefix("<h2>") for line in page.splitlines() if line.startswith("<h2>")]
    assert headings == [
        "omniglot 5-way 1-shot, 100 meta-training tasks, 600 test episodes per cell: accuracy ↑ higher is better",
        "omniglot 5-way 1-shot, 100 meta-training tasks, 100 test episodes per cell: accuracy ↑ higher is better",
        "omniglot 5-way 1-shot, 50 meta-training tasks, 5 test episodes per cell: accuracy ↑ higher is better",
        "omniglot 5-way 5-shot, 100 meta-training tasks, 600 test episodes per cell: accuracy ↑ higher is better",
        "Runs read"]


def test_a_folder_that_is_no_site_is_refused_and_a_site_is_rewritten(results, site, tmp_path, capsys):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    assert cli.main(["leaderboard", str(results), "--out", str(other)]) == 2
    assert capsys.readouterr().err == f"bench leaderboard: error: {other} exists and is not a leaderboard site; choose another --out\n"
    assert [path.name for path in other.iterdir()] == ["todo.txt"]
    copy = Path(shutil.copytree(site, tmp_path / "site"))
    (copy / "runs" / "stale").mkdir()
    assert cli.main(["leaderboard", str(results), "--out", str(copy)]) == 0
    assert not (copy / "runs" / "stale").exists() and broken_links(copy) == []


def test_an_unreadable_run_is_named_and_left_out(results, tmp_path, capsys):
    copy = Path(shutil.copytree(results, tmp_path / "results"))
    (copy / "plain" / "run.json").write_text("{")
    site = tmp_path / "site"
    assert cli.main(["leaderboard", str(copy), "--out", str(site)]) == 0
    (warning,) = capsys.readouterr().err.splitlines()
    assert warning.startswith(f"warning: skipped {copy / 'plain'}: ")
    assert not (site / "runs" / "plain").exists() and (site / "runs" / "resumed" / "report.html").is_file()


def test_a_run_killed_before_its_report_gets_one_rendered_in_the_site(results, tmp_path):
    copy = Path(shutil.copytree(results, tmp_path / "results"))
    (copy / "plain" / "report.html").unlink()  # as a run killed before its end leaves it
    site = tmp_path / "site"
    assert cli.main(["leaderboard", str(copy), "--out", str(site)]) == 0
    page = (site / "runs" / "plain" / "report.html").read_text()
    assert "<table" in page and "reptile" in page and broken_links(site) == []

