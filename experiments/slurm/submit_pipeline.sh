#!/bin/bash
# Submit the clods-pl pipeline to SLURM as a chain of dependent jobs:
#   stage1 (DDP) -> stage2 array (CLODS_STAGE2_SHARDS shards) -> stage2 finalize -> stage3 (DDP) -> eval + report
# each starting only when the previous one succeeded (--dependency=afterok). Usage (from anywhere):
#   bash experiments/slurm/submit_pipeline.sh CONFIG RUN_DIR        (make slurm-pipeline CONFIG=... RUN=...)
# Cluster knobs: environment variables, see cluster.env (CLODS_PARTITION, CLODS_GPUS_PER_NODE, CLODS_NODES, ...).
#   CLODS_STAGES="stage2 stage3 eval"  submit only these steps (default: stage1 stage2 stage3 eval)
#   CLODS_AFTER=<jobid>                make the first submitted job wait for this job (afterok)
#   CLODS_DRY_RUN=1                    print the sbatch commands instead of submitting
#   SBATCH=/path/to/sbatch             the sbatch binary (default: sbatch on PATH)
# Prints the job ids (also written to RUN_DIR/slurm/jobs.txt); job logs go to RUN_DIR/slurm/.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 CONFIG RUN_DIR   (e.g. experiments/flag_paper.yaml runs/paper)" >&2
    exit 2
fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CLODS_ROOT="${CLODS_ROOT:-$(cd "$HERE/../.." && pwd)}"
CLODS_CONFIG="$(realpath -m "$1")"
CLODS_RUN="$(realpath -m "$2")"
export CLODS_CONFIG CLODS_RUN
shift 2
if [[ ! -f "$CLODS_CONFIG" ]]; then
    echo "error: config $CLODS_CONFIG does not exist; pass an experiment YAML (e.g. experiments/flag_paper.yaml)" >&2
    exit 2
fi
# shellcheck source=cluster.env
source "$HERE/cluster.env"
STAGES="${CLODS_STAGES:-stage1 stage2 stage3 eval}"
SBATCH="${SBATCH:-sbatch}"
if [[ -z "${CLODS_DRY_RUN:-}" ]] && ! command -v "$SBATCH" >/dev/null; then
    echo "error: '$SBATCH' not found; run this on a SLURM login node (or set SBATCH=/path/to/sbatch)" >&2
    exit 2
fi
LOGS="$CLODS_RUN/slurm"
mkdir -p "$LOGS"

# Options shared by every job.
common=(--parsable --export=ALL --chdir="$CLODS_ROOT")
[[ -n "$CLODS_PARTITION" ]] && common+=(--partition="$CLODS_PARTITION")
[[ -n "$CLODS_ACCOUNT" ]] && common+=(--account="$CLODS_ACCOUNT")
[[ -n "$CLODS_QOS" ]] && common+=(--qos="$CLODS_QOS")
[[ -n "$CLODS_MEM" ]] && common+=(--mem="$CLODS_MEM")
# shellcheck disable=SC2206
[[ -n "$CLODS_SBATCH_EXTRA" ]] && common+=($CLODS_SBATCH_EXTRA)

# Resources of a job on NODES nodes: one task per GPU (or CLODS_CPU_TASKS_PER_NODE CPU tasks when no GPUs).
resources() {
    local nodes="$1" tasks_per_node="$2"
    local out=(--nodes="$nodes" --ntasks-per-node="$tasks_per_node" --cpus-per-task="$CLODS_CPUS_PER_TASK")
    if (( CLODS_GPUS_PER_NODE > 0 )); then out+=(--gpus-per-node="$tasks_per_node"); fi
    echo "${out[@]}"
}
if (( CLODS_GPUS_PER_NODE > 0 )); then TPN="$CLODS_GPUS_PER_NODE"; else TPN="$CLODS_CPU_TASKS_PER_NODE"; fi

if ! [[ "$CLODS_STAGE2_SHARDS" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: CLODS_STAGE2_SHARDS=$CLODS_STAGE2_SHARDS; give the number of stage-2 array tasks (>= 1)" >&2
    exit 2
fi

dep="${CLODS_AFTER:-}"
jobs_file="$LOGS/jobs.txt"
[[ -z "${CLODS_DRY_RUN:-}" ]] && : > "$jobs_file"  # a dry run leaves the record of the last real submission
# submit NAME SCRIPT [sbatch options...]: submit after the previous job, remember the id as the next dependency.
submit() {
    local name="$1" script="$2"; shift 2
    local cmd=("$SBATCH" "${common[@]}" "$@")
    [[ -n "$dep" ]] && cmd+=(--dependency="afterok:$dep")
    cmd+=("$HERE/$script")
    if [[ -n "${CLODS_DRY_RUN:-}" ]]; then
        printf '%q ' "${cmd[@]}"; echo
        dep="DRYRUN_$name"
        return
    fi
    local out
    out="$("${cmd[@]}")"
    dep="${out%%;*}"
    echo "$name $dep" | tee -a "$jobs_file"
}

for step in $STAGES; do
    case "$step" in
        stage1)
            # shellcheck disable=SC2046
            submit stage1 stage1.sbatch $(resources "$CLODS_NODES" "$TPN") --time="$CLODS_TIME_STAGE1" \
                --output="$LOGS/%x-%j.out" ;;
        stage2)
            [[ -z "${CLODS_DRY_RUN:-}" ]] && echo "$CLODS_STAGE2_SHARDS" > "$LOGS/stage2_shards"  # read by stage2.sbatch
            # shellcheck disable=SC2046
            submit stage2 stage2.sbatch $(resources "$CLODS_STAGE2_NODES" "${CLODS_STAGE2_TASKS_PER_NODE:-$TPN}") --time="$CLODS_TIME_STAGE2" \
                --array="0-$((CLODS_STAGE2_SHARDS - 1))" --output="$LOGS/%x-%A_%a.out"
            # shellcheck disable=SC2046
            submit stage2_finalize stage2_finalize.sbatch $(resources 1 1) --time="$CLODS_TIME_EVAL" \
                --output="$LOGS/%x-%j.out" ;;
        stage3)
            # shellcheck disable=SC2046
            submit stage3 stage3.sbatch $(resources "$CLODS_NODES" "$TPN") --time="$CLODS_TIME_STAGE3" \
                --output="$LOGS/%x-%j.out" ;;
        eval)
            # shellcheck disable=SC2046
            submit eval eval.sbatch $(resources 1 1) --time="$CLODS_TIME_EVAL" --output="$LOGS/%x-%j.out" ;;
        *)
            echo "error: CLODS_STAGES has unknown step '$step'; use stage1 stage2 stage3 eval" >&2
            exit 2 ;;
    esac
done
