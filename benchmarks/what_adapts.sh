#!/usr/bin/env bash
# Issue 16's comparison of what adapts: every weight (maml), a context vector (adaptation-layer, CAVIA), the head
# only (anil), every weight with learned per-weight rates (metasgd), nothing (protonet), on sinusoid K=10 and
# Omniglot 5-way 1-shot, under one budget profile. Writes RUNS_DIR/what-adapts.md: result at the val-chosen step,
# steps to 90% of the gain, adapted-parameter count and ms per episode, with each run's command.
#
# usage: benchmarks/what_adapts.sh OMNIGLOT_DATA_DIR [RUNS_DIR] [PROFILE] [SEEDS]
#        (defaults: RUNS_DIR /tmp/metabench-what-adapts, PROFILE quick, SEEDS the profile's)
set -euo pipefail
data=${1:?usage: benchmarks/what_adapts.sh OMNIGLOT_DATA_DIR [RUNS_DIR] [PROFILE] [SEEDS]}
runs=${2:-/tmp/metabench-what-adapts}
profile=${3:-quick}
seeds=${4:+--seeds $4}
learners=maml,adaptation-layer,anil,metasgd,protonet
mkdir -p "$runs"
# shellcheck disable=SC2086
bench run --learners "$learners" --suites sinusoid --shots 10 --profile "$profile" $seeds --no-progress \
  --out "$runs/sinusoid"
# shellcheck disable=SC2086
bench run --learners "$learners" --suites omniglot --ways 5 --shots 1 --data-dir "$data" --profile "$profile" \
  $seeds --no-progress --out "$runs/omniglot"
python "$(dirname "$0")/what_adapts.py" "$runs/sinusoid" "$runs/omniglot" > "$runs/what-adapts.md"
cat "$runs/what-adapts.md"
