#!/usr/bin/env bash
# GPU checks in one call, on a CUDA machine (e.g. a lent H100): install carried wheels (if any), run the
# gpu-marked tests, then the GPU benchmarks. Results land in benchmarks/results/ (and $OUT when set).
#   bash benchmarks/gpu.sh            # from the repository root
# Wheels for packages the machine lacks (gsplat, jsonargparse, dgl, ...) may be carried in .whl/; the original
# 3DGS rasterizer (backend inria) must already be installed by the user (clods-pl never builds it).
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
status=0
python3 -m pytest -q -m gpu -p no:cacheprovider tests || status=$?
python3 -m benchmarks.bench_render --device cuda || status=$?
python3 -m benchmarks.bench_dynamics --device cuda || status=$?
if [[ -n "${OUT:-}" ]]; then cp benchmarks/results/*_cuda.json "$OUT"/ 2>/dev/null || true; fi
exit $status
