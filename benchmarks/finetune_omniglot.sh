#!/usr/bin/env bash
# Issue 15's fine-tuning baseline: Chen et al.'s protocol (the default) against metabench's earlier cheap learner
# (`protocol=cheap`: 10 full-batch SGD steps from a zero head; `pretrain_batch=250`: one Adam step per 25 tasks of
# 5-way 1-shot), and Chen's running batch-norm statistics, on the full Omniglot, 5-way 1-shot, `quick` profile
# (3 seeds x 200 test episodes, the same episodes in every run). One torch thread: on a busy CPU a second one makes
# the heads' tiny steps wait. The numbers are in the README (Built-in plugins: the fine-tuning baseline).
#
# usage: benchmarks/finetune_omniglot.sh DATA_DIR [RUNS_DIR]   (DATA_DIR holds omniglot/images_background ...;
#        default RUNS_DIR: /tmp/metabench-finetune)
set -euo pipefail
data=$1
runs=${2:-/tmp/metabench-finetune}
mkdir -p "$runs"
export OMP_NUM_THREADS=1
run() {  # run NAME FLAGS...
  local name=$1; shift
  bench run --suites omniglot --ways 5 --shots 1 --profile quick --learners finetune --data-dir "$data" \
    --out "$runs/$name" --no-progress "$@"
}
run chen
run today --set finetune.protocol=cheap --set finetune.pretrain_batch=250
run chen-running-bn --set finetune.batch_norm=running
