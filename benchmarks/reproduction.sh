#!/usr/bin/env bash
# The reproduction table, results/reproduction.md: every built-in learner at its paper's budget (the `paper` profile:
# each setting's and each learner's published budget), 3 seeds, beside the published numbers of
# benchmarks/published.toml (benchmarks/reproduction.py writes the table).
#
# usage: benchmarks/reproduction.sh [RUNS_DIR] [SHOTS ...]
#   RUNS_DIR: where the run folders go (default: results/reproduction-runs, not tracked)
#   SHOTS:    sinusoid K values to run (default: 10; "10 5 20" for all three)
# On a 2-core CPU with 1 torch thread, sinusoid K=10 takes about TODO. Image suites at the paper budget need a GPU:
#   bench run --learners all --suites omniglot --profile paper --seeds 3 --data-dir DATA --out RUNS_DIR/omniglot-paper
# then pass that folder to benchmarks/reproduction.py as well.
set -euo pipefail
runs=${1:-results/reproduction-runs}
shift || true
shots=("${@:-10}")
folders=()
for k in "${shots[@]}"; do
  out="$runs/sinusoid-paper-k$k"
  # --resume continues an interrupted run; a fresh folder starts one.
  if [[ -f "$out/run.json" ]]; then
    OMP_NUM_THREADS=1 bench run --resume "$out" --no-progress
  else
    OMP_NUM_THREADS=1 bench run --learners all --suites sinusoid --shots "$k" --seeds 3 --profile paper \
      --no-progress --out "$out"
  fi
  folders+=("$out")
done
python "$(dirname "$0")/reproduction.py" "${folders[@]}" \
  --note "Omniglot and mini-ImageNet rows need the paper's budget on a GPU: none was lent to this measurement."
