#!/usr/bin/env bash
# The Omniglot 5-way 1-shot `paper` profile on a GPU, as far as a time limit allows.
#
# usage: benchmarks/gpu_omniglot_paper.sh OMNIGLOT_NPZ_DIR OUT_DIR [SECONDS [EXTRA BENCH RUN FLAGS...]]
#   OMNIGLOT_NPZ_DIR: the lossless arrays + stage.py (../shared/data/omniglot)
#   SECONDS: the meta-training time maml gets (default 120); the other learners get the same task budget
# Stages the PNG tree (in parallel, per alphabet), measures maml's tasks/s on the GPU, then runs
# every learner for the number of tasks maml does in SECONDS (at most the paper's 1,920,000), with the
# paper's 600 test episodes. The budget actually used is in OUT_DIR/run.json and the tables.
set -euo pipefail
source_dir=$1 out=$2 seconds=${3:-120}
data=$(mktemp -d)
python3 - "$source_dir" <<'PY' | xargs -P "$(nproc)" -n 1 python3 "$source_dir/stage.py" "$source_dir" "$data/omniglot"
import sys; sys.path.insert(0, sys.argv[1]); from mapping import BACKGROUND, EVALUATION
print("\n".join(name for name, _ in BACKGROUND + EVALUATION))
PY
export METABENCH_CACHE_DIR=$data/cache PYTHONUNBUFFERED=1
common=(--suites omniglot --data-dir "$data" --ways 5 --shots 1 --profile paper --device "${DEVICE:-cuda}" --no-progress)
bench run --learners maml "${common[@]}" --tasks 3200 --episodes 20 --out "$data/probe" > /dev/null
rate=$(python3 -c "import json,sys; c=json.load(open(sys.argv[1])); print(c['tasks_seen']/c['meta_train_seconds'])" \
       "$data"/probe/cells/*maml*.json)
tasks=$(python3 -c "print(min(1_920_000, int($rate * $seconds) // 32 * 32))")
echo "maml: $rate tasks/s; budget $tasks tasks per learner"
bench run --learners all "${common[@]}" --tasks "$tasks" --out "$out" "${@:4}"
