#!/usr/bin/env bash
# Issue 14's seeds target: the wall time of `bench run` for maml, fomaml and adaptation-layer on sinusoid K=10,
# quick profile, with --seeds 5 against --seeds 1, each on a "fresh machine": an empty metabench cache (so any
# compile is paid in full, cold) and nothing else running. Prints both wall times and their ratio; also the
# same 5 seeds one at a time (--seeds-together 1), for what the seed groups save.
#
# usage: benchmarks/seeds_together.sh [RUNS_DIR]   (default RUNS_DIR: /tmp/metabench-seeds-together)
set -euo pipefail
runs=${1:-/tmp/metabench-seeds-together}
rm -rf "$runs" && mkdir -p "$runs"
run() {  # run NAME FLAGS...: one timed `bench run` in a fresh cache; prints its wall seconds
  local name=$1; shift
  local start=$SECONDS
  METABENCH_CACHE_DIR="$runs/cache-$name" bench run --learners maml,fomaml,adaptation-layer --suites sinusoid \
    --shots 10 --profile quick --no-progress --out "$runs/$name" "$@" > "$runs/$name.log" 2>&1
  echo $((SECONDS - start))
}
one=$(run seeds1 --seeds 1)
five=$(run seeds5 --seeds 5)
apart=$(run seeds5-apart --seeds 5 --seeds-together 1)
python3 -c "print(f'seeds 1: $one s; seeds 5 together: $five s = {$five / $one:.2f}x; '
            f'seeds 5 one at a time: $apart s = {$apart / $one:.2f}x')"
grep -h "compile=auto" "$runs"/seeds1.log "$runs"/seeds5.log | sort | uniq -c
