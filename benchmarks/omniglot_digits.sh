#!/usr/bin/env bash
# Issue 16's Omniglot → digits table: every classification learner (learn2learn's MAML and Meta-SGD included),
# meta-trained on Omniglot 5-way 1-shot, scored on Omniglot's test episodes and on the UCI digits; the quick profile
# (3,200 tasks, 3 seeds) unless flags say otherwise. Resumable: run it again with the same RUN_DIR after a stop (the
# quick profile is about 15 core-hours on a 2-core CPU, see results/omniglot-digits.md).
#
# usage: benchmarks/omniglot_digits.sh OMNIGLOT_DATA_DIR RUN_DIR [EXTRA BENCH RUN FLAGS...]
#   e.g. results/omniglot-digits.md's reduced budget: ... --tasks 800 --val-every 160 --val-episodes 20 --episodes 50
#        --set protonet.train_ways=5 --set r2d2.train_ways=5 --executor processes --workers 2
set -euo pipefail
data=${1:?usage: benchmarks/omniglot_digits.sh OMNIGLOT_DATA_DIR RUN_DIR [EXTRA BENCH RUN FLAGS...]}
run=${2:?usage: benchmarks/omniglot_digits.sh OMNIGLOT_DATA_DIR RUN_DIR [EXTRA BENCH RUN FLAGS...]}
if [[ -f "$run/run.json" ]]; then
  bench run --resume "$run" --no-progress
else
  bench run --learners all,l2l-maml,l2l-metasgd --suites omniglot --ways 5 --shots 1 --test-suites digits \
    --data-dir "$data" --profile quick --no-progress --out "$run" "${@:3}"
fi
echo "the table: $run/report.md"
