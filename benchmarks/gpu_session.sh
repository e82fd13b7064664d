#!/usr/bin/env bash
# The device check of a GPU session (issue 13), as one command on the lent machine.
#   here, once:           benchmarks/gpu_session.sh --fetch      (wheels the machine lacks -> .gpu-wheels/)
#   there (device tool):  bash benchmarks/gpu_session.sh         (carry: [".gpu-wheels"]; timeout_s 600)
# The machine has Python 3.12 with torch, numpy, pandas, scikit-learn, safetensors, Pillow, matplotlib and tqdm,
# and no network: the DICOM libraries travel as wheels. Results: $OUT/bench_gpu.jsonl, then the JSON on stdout.
set -euo pipefail
wheels=.gpu-wheels
if [ "${1:-}" = "--fetch" ]; then
  python3 -m pip download --quiet --dest "$wheels" --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --no-deps \
    pydicom pylibjpeg pylibjpeg-openjpeg pylibjpeg-rle pyjpegls python-gdcm
  exit 0
fi
site=$(mktemp -d)
python3 -m pip install --quiet --no-index --no-deps --target "$site" "$wheels"/*.whl
export PYTHONPATH="$PWD/src:$site" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 benchmarks/bench_gpu.py --out "${OUT:-gpu-out}" --budget-s "${BUDGET_S:-300}"
