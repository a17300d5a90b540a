#!/usr/bin/env bash
# Issue 14's trial populations: `bench tune` wall time with --population 3 against the same trials one at a time
# (--workers 3 with the inline executor: the same three trials asked per batch, run one after the other), maml on
# sinusoid K=10 with only the learning rates searched. Each on an empty metabench cache; nothing else running.
#
# usage: benchmarks/tune_population.sh [RUNS_DIR]   (default RUNS_DIR: /tmp/metabench-tune-population)
set -euo pipefail
runs=${1:-/tmp/metabench-tune-population}
rm -rf "$runs" && mkdir -p "$runs"
tune() {  # tune NAME FLAGS...: one timed `bench tune` in a fresh cache; prints its wall seconds
  local name=$1; shift
  local start=$SECONDS
  METABENCH_CACHE_DIR="$runs/cache-$name" bench tune --learners maml --set maml.inner_steps=1 --suites sinusoid \
    --shots 10 --trials 6 --trial-tasks 20000 --no-progress --out "$runs/$name" "$@" > "$runs/$name.log" 2>&1
  echo $((SECONDS - start))
}
together=$(tune population --population 3)
apart=$(tune one-at-a-time --workers 3)
python3 -c "print(f'population 3: $together s; one at a time: $apart s = {$apart / $together:.2f}x the population')"
