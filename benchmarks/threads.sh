#!/usr/bin/env bash
# The line behind bench/threads.py (issue 18): meta-training tasks/s of one cell alone with 1 torch thread and with
# every core's, for the networks the built-in suites build: the sinusoid MLP, the Omniglot Conv-4 and ResNet-12 (on
# Omniglot's 28x28 images; mini-ImageNet's are not on this machine): maml (eager, compile=false) on the MLP and the
# Conv-4, protonet on ResNet-12 (second-order MAML on it takes minutes an iteration here). Run it on an otherwise idle
# machine: a timing taken beside another torch process means nothing. Prints one line per (network, learner,
# implementation, threads); maml's learn2learn reference is timed beside it by bench perf.
#
# usage: benchmarks/threads.sh OMNIGLOT_DATA_DIR [OUT_DIR]   (default OUT_DIR: /tmp/metabench-threads)
set -euo pipefail
data=${1:?usage: benchmarks/threads.sh OMNIGLOT_DATA_DIR [OUT_DIR]}
out=${2:-/tmp/metabench-threads}
mkdir -p "$out"
cores=$(python3 -c "import os; print(len(os.sched_getaffinity(0)))")
for threads in 1 "$cores"; do
  for case in "sinusoid mlp 10 maml" "omniglot conv4 1 maml" "omniglot resnet12 1 protonet"; do
    read -r suite backbone shots learner <<< "$case"
    flags=(); [[ $backbone != mlp ]] && flags=(--backbone "$backbone" --ways 5)
    OMP_NUM_THREADS=$threads bench perf --learners "$learner" --suites "$suite" --shots "$shots" "${flags[@]}" \
      --set maml.compile=false --data-dir "$data" --iterations 5 --warmup 2 --eval-episodes 1 \
      --json "$out/$suite-$backbone-$threads.json" > "$out/$suite-$backbone-$threads.log" 2>&1 || true
    python3 - "$out/$suite-$backbone-$threads.json" "$backbone" "$threads" <<'PY'
import json, sys
for row in json.load(open(sys.argv[1]))["rows"]:
    print(f"{row['suite']} {sys.argv[2]} {row['learner']} ({row['implementation']}): {sys.argv[3]} thread(s) "
          f"{row['train_tasks_per_s']:.1f} tasks/s")
PY
  done
done
