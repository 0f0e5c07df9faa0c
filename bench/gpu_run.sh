#!/usr/bin/env bash
# Runs on the lent GPU machine, over the .gpu-carry/ that bench/gpu_carry.sh made: installs the carried wheels
# beside the image's torch and torchvision, runs bench/gpu.py once (its table also goes to $OUT/gpu.txt), then the
# tests that skip without a GPU or torchvision (nvJPEG decoding, half precision on CUDA) to $OUT/gpu-tests.txt.
# Each step has its own time limit, so a slow benchmark still leaves the tests their turn inside one device call.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .gpu-carry/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 GRADWATCH_SHARED_DATA=.gpu-carry/data
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout "${BENCH_TIMEOUT:-240}" python3 bench/gpu.py --count "${COUNT:-2048}" --batch-size "${BATCH_SIZE:-256}" ${GPU_BENCH_ARGS:-} 2>&1 \
  | tee "${OUT:-/tmp}/gpu.txt"
timeout "${TESTS_TIMEOUT:-100}" python3 -m pytest -q -p no:cacheprovider -rA --tb=short --timeout 45 --durations 5 ${GPU_TEST_ARGS:-} tests/scoring/test_decoding.py tests/scoring/test_gradnorm.py 2>&1 \
  | tee "${OUT:-/tmp}/gpu-tests.txt" | tail -40
