#!/usr/bin/env bash
# The reference reports in results/, each run with `bench run` and written by `bench report --format md`:
# results/README.md, the `quick` profile on sinusoid K=10 with every built-in learner (3 seeds, the profile's
# default; meta-validation and selection as the profile sets them), and results/omniglot-5w1s-quick.md, the `quick`
# profile on Omniglot 5-way 1-shot (the published one was made with one seed, before meta-validation existed).
#
# usage: benchmarks/reference_report.sh OMNIGLOT_DATA_DIR [RUNS_DIR]
#   OMNIGLOT_DATA_DIR: a folder holding omniglot/images_background, images_evaluation (bench data omniglot --download)
#   RUNS_DIR: where the run folders go (default: results/reference-runs, not tracked)
set -euo pipefail
data=$1 runs=${2:-results/reference-runs}
bench run --learners all --suites sinusoid --shots 10 --profile quick --no-progress --out "$runs/sinusoid-k10-quick"
bench run --learners all --suites omniglot --ways 5 --shots 1 --profile quick --data-dir "$data" --no-progress \
  --out "$runs/omniglot-5w1s-quick"
bench report "$runs/sinusoid-k10-quick" --format md --out results/README.md
bench report "$runs/omniglot-5w1s-quick" --format md --out results/omniglot-5w1s-quick.md
