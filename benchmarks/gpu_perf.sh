#!/usr/bin/env bash
# `bench perf` on a GPU: Omniglot 5-way 1-shot (Conv-4, meta-batch 32) and sinusoid K=10 (MLP, 25),
# maml and fomaml eager, then maml with compile=true, each beside learn2learn's MAML.
#
# usage: benchmarks/gpu_perf.sh OMNIGLOT_NPZ_DIR OUT_DIR [LEARN2LEARN_PACKAGE_DIR]
#   OMNIGLOT_NPZ_DIR: the lossless arrays + stage.py (../shared/data/omniglot)
#   LEARN2LEARN_PACKAGE_DIR: used only where `import learn2learn` fails (e.g. no torchvision on the
#     GPU machine): learn2learn's own, unmodified algorithms/maml.py, algorithms/base_learner.py and
#     utils/__init__.py are loaded from it as a package without its vision/data modules.
set -euo pipefail
source_dir=$1 out=$2 l2l_source=${3:-}
mkdir -p "$out"
data=$(mktemp -d)
python3 - "$source_dir" <<'PY' | xargs -P "$(nproc)" -n 1 python3 "$source_dir/stage.py" "$source_dir" "$data/omniglot"
import sys; sys.path.insert(0, sys.argv[1]); from mapping import BACKGROUND, EVALUATION
print("\n".join(name for name, _ in BACKGROUND + EVALUATION))
PY
if ! python3 -c "import learn2learn" 2> "$out/learn2learn-import.txt" && [ -n "$l2l_source" ]; then
  core=$(mktemp -d)/learn2learn
  mkdir -p "$core/algorithms" "$core/utils"
  cp "$l2l_source/_version.py" "$core/"
  cp "$l2l_source/utils/__init__.py" "$core/utils/"
  cp "$l2l_source/algorithms/maml.py" "$l2l_source/algorithms/base_learner.py" "$core/algorithms/"
  printf 'from ._version import __version__\nfrom . import algorithms\n' > "$core/__init__.py"
  printf 'from .maml import MAML\n' > "$core/algorithms/__init__.py"
  export PYTHONPATH=$(dirname "$core")${PYTHONPATH:+:$PYTHONPATH}
  echo "learn2learn: core algorithms loaded from $l2l_source (full import failed, see learn2learn-import.txt)"
fi
python3 -c "import learn2learn, torch; print('learn2learn', learn2learn.__version__, 'torch', torch.__version__, torch.cuda.get_device_name())"
export METABENCH_CACHE_DIR=$data/cache PYTHONUNBUFFERED=1
common=(--suites omniglot,sinusoid --data-dir "$data" --device cuda --iterations 20 --warmup 3 --eval-episodes 100)
bench perf --learners maml,fomaml "${common[@]}" --json "$out/perf-eager.json"
timeout "${COMPILED_SECONDS:-300}" bench perf --learners maml --set maml.compile=true "${common[@]}" \
  --json "$out/perf-compiled.json"
