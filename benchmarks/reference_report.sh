#!/usr/bin/env bash
# The reference reports in results/: the `quick` profile on sinusoid (all settings) and on Omniglot
# 5-way 1-shot, each run with `bench run` (one seed, as the published reports were made; the quick profile's
# default is now 3) and written by `bench report --format md`.
#
# usage: benchmarks/reference_report.sh OMNIGLOT_DATA_DIR [RUNS_DIR]
#   OMNIGLOT_DATA_DIR: a folder holding omniglot/images_background, images_evaluation (bench data omniglot --download)
#   RUNS_DIR: where the run folders go (default: results/reference-runs, not tracked)
set -euo pipefail
data=$1 runs=${2:-results/reference-runs}
bench run --learners all --suites sinusoid --profile quick --seeds 1 --no-progress --out "$runs/sinusoid-quick"
bench run --learners all --suites omniglot --ways 5 --shots 1 --profile quick --seeds 1 --data-dir "$data" --no-progress \
  --out "$runs/omniglot-5w1s-quick"
bench report "$runs/sinusoid-quick" --format md --out results/README.md
bench report "$runs/omniglot-5w1s-quick" --format md --out results/omniglot-5w1s-quick.md
