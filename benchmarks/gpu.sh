#!/usr/bin/env bash
# GPU checks in one call, on a CUDA machine (e.g. a lent H100): install carried wheels (if any), run the
# gpu-marked tests, the GPU benchmarks, and a short end-to-end GPU pipeline. Results land in benchmarks/results/
# (and, as two archives, in $OUT when set). Each part has its own time limit, so one hang does not cost the rest.
#   bash benchmarks/gpu.sh            # from the repository root
#   GPU_STEPS="gpu-tests bench-stage2" bash benchmarks/gpu.sh     # only these steps (gsplat-jit always runs)
# Wheels for packages the machine lacks (gsplat, jsonargparse, ...) may be carried in .whl/. The original 3DGS
# rasterizer (backend inria) must already be installed by the user (clods-pl never builds it; a wheel the user
# built for that machine may lie in .whl/ too); without it the inria tests and rows are skipped. The gpu_bench
# dataset is generated when data/gpu_bench is missing.
# Time on an H100 (BENCHMARKS.md): gsplat's JIT 75-110 s, gpu-tests 20 s, bench-render 10 s, bench-dynamics ~75 s
# (two compile modes), pipeline: stages 32 s and eval (> 300 s before its table was trimmed, not timed since),
# bench-stage2 ~40 s; GPU_STEPS picks a subset for short leases.
set -uo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 WANDB_MODE=offline
RESULTS=benchmarks/results
RUN=${GPU_RUN_DIR:-runs/gpu_bench}
status=0
STEPS=${GPU_STEPS:-gsplat-jit gpu-tests bench-render bench-dynamics data pipeline bench-stage2}
step() {  # step NAME SECONDS CMD...: run with a time limit, log its wall time, remember a failure
    local name=$1 limit=$2; shift 2
    [[ $name == gsplat-jit || " $STEPS " == *" $name "* ]] || { echo "=== $name: skipped (GPU_STEPS)"; return; }
    local t0=$SECONDS
    echo "=== $name (limit ${limit}s) $(date -u +%T)"
    timeout "$limit" "$@"
    local rc=$?
    echo "=== $name: rc=$rc in $((SECONDS - t0)) s"
    [[ $rc -eq 0 ]] || status=1
}
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

# gsplat 1.5.3 JIT-compiles its CUDA kernels on first use (~80 s): do it once, visibly, before anything is timed
step gsplat-jit 300 python3 -m benchmarks.gsplat_jit
step gpu-tests 240 python3 -m pytest -q -s -m gpu -p no:cacheprovider tests/test_render_gpu.py
step bench-render 180 python3 -m benchmarks.bench_render --device cuda --repeats 10
step bench-dynamics 240 python3 -m benchmarks.bench_dynamics --device cuda --repeats 10 --train_steps 30 \
    --compile_modes none reduce-overhead
if [[ ! -f data/gpu_bench/dataset.json ]]; then
    step data 300 python3 -m clods_pl data generate --config experiments/data/gpu_bench.yaml --out data/gpu_bench
fi
step pipeline 300 python3 -m clods_pl pipeline --config experiments/gpu/gpu_bench.yaml --run_dir "$RUN"
if [[ -f "$RUN/stage1/smgs.ckpt" ]]; then  # 1-8 trajectories in one batch (8: the four of gpu_bench twice)
    step bench-stage2 240 python3 -m benchmarks.bench_stage2 --dataset data/gpu_bench --stage1 "$RUN/stage1/smgs.ckpt" \
        --device cuda --backends gsplat --trajectories 1 2 4 8 --frames 3 --iterations 100 --holdout 1 --profile
fi
if [[ -n "${OUT:-}" ]]; then
    tar czf "$OUT/gpu_results.tgz" $RESULTS/*_cuda*.json $RESULTS/*cuda*profile.txt 2>/dev/null || true
    tar czf "$OUT/gpu_run.tgz" --exclude='*.ckpt' "$RUN" 2>/dev/null || true
fi
exit $status
