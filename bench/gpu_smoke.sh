#!/usr/bin/env bash
# The GPU smoke run, for a single-H100 machine whose image has torch (and transformers, peft) but no Ray,
# DeepSpeed or vLLM. From the project root on this machine:
#
#   ../shared/gpu/make-wheelhouse.sh          # builds .gpu-wheels/ (Ray 2.60 + DeepSpeed 0.19.8, ~49 MB)
#
# then, through the device tool, run `bash bench/gpu_smoke.sh` carrying ".gpu-wheels". It installs the kit,
# runs the GPU test tier (tests/gpu: IPC colocated sync, bf16 probe, devices, the memory plan against
# measured peaks; NCCL between GPUs where >= 2 are visible) and bench/gpu_smoke.py (one GPU, colocated,
# IPC sync, the hf engine, a Qwen2-0.5B-shaped bf16 model: sync GB/s, tokens/s per phase, learner MFU,
# memory plan vs peak). Output goes to $OUT (the device tool's folder) or ./gpu-smoke-out.
set -uo pipefail
out=${OUT:-$PWD/gpu-smoke-out}
mkdir -p "$out"
if ! python3 -c "import ray, deepspeed" 2>/dev/null; then
  test -d .gpu-wheels || { echo "gpu_smoke: no .gpu-wheels/ here: run ../shared/gpu/make-wheelhouse.sh and carry it" >&2; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --target ~/site .gpu-wheels/*.whl || exit 2
  export PYTHONPATH=~/site:$PWD
fi
export TORCH_CUDA_ARCH_LIST=9.0   # the H100 image's "9.0a" breaks DeepSpeed's op builder (STACK-NOTES)
export PATH=~/site/bin:$PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
python3 -m pytest tests/gpu -q -s -p no:cacheprovider -o addopts="" 2>&1 | tee "$out/gpu-tests.log"
tests=${PIPESTATUS[0]}
python3 bench/gpu_smoke.py --out /tmp/gpu-smoke 2>&1 | tee "$out/gpu-smoke.log"
smoke=${PIPESTATUS[0]}
cp /tmp/gpu-smoke/figures.json "$out/" 2>/dev/null
echo "gpu tests: exit $tests; smoke run: exit $smoke"
exit $(( tests || smoke ))
