# Sourced by every clods-pl job script: repo root, cluster knobs, environment, container wrapper, trainer flags.
# Needs CLODS_ROOT (exported by submit_pipeline.sh; default: the directory sbatch was called from).
set -euo pipefail

CLODS_ROOT="${CLODS_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}"
cd "$CLODS_ROOT"
# shellcheck source=cluster.env
source "$CLODS_ROOT/experiments/slurm/cluster.env"
if [[ -n "$CLODS_ENV_SETUP" ]]; then eval "$CLODS_ENV_SETUP"; fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"
: "${CLODS_CONFIG:?set CLODS_CONFIG (the experiment YAML); submit_pipeline.sh does}"
: "${CLODS_RUN:?set CLODS_RUN (the run directory); submit_pipeline.sh does}"

# Command prefix: nothing on the host, or "apptainer exec [--nv] ... IMAGE" when CLODS_IMAGE is set.
CLODS_EXEC=()
if [[ -n "$CLODS_IMAGE" ]]; then
    CLODS_EXEC=("$CLODS_CONTAINER_RUNTIME" exec --bind "$CLODS_ROOT" --pwd "$CLODS_ROOT")
    if (( CLODS_GPUS_PER_NODE > 0 )); then CLODS_EXEC+=(--nv); fi
    CLODS_EXEC+=("$CLODS_IMAGE")
fi

# The clods-pl command line and python: the container's, the repo venv's, or the ones on PATH.
if [[ -n "$CLODS_IMAGE" ]]; then
    CLODS_CLI=(clods-pl); CLODS_PY=(python)
elif [[ -x "$CLODS_ROOT/.venv/bin/clods-pl" ]]; then
    CLODS_CLI=("$CLODS_ROOT/.venv/bin/clods-pl"); CLODS_PY=("$CLODS_ROOT/.venv/bin/python")
else
    CLODS_CLI=(clods-pl); CLODS_PY=(python3)
fi
if [[ -n "$CLODS_PYTHON" ]]; then CLODS_PY=("$CLODS_PYTHON"); fi

# Helper commands of clods_pl.pipeline.slurm (shard) on the batch host.
clods_helper() { "${CLODS_EXEC[@]}" "${CLODS_PY[@]}" -m clods_pl.pipeline.slurm "$@"; }

# Trainer overrides matching the allocation: one DDP process per task (= per GPU), Lightning's SLURM environment
# (auto-detected under srun) gives each process its rank and requeues the job on SIGUSR1.
clods_trainer_args() {
    local nodes="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}" per_node="${SLURM_NTASKS_PER_NODE:-1}" acc=cpu
    per_node="${per_node%%(*}"  # "2(x3)" -> "2"
    if (( CLODS_GPUS_PER_NODE > 0 )); then acc=gpu; fi
    local strategy=auto
    if (( nodes * per_node > 1 )); then strategy=ddp; fi
    echo "--trainer.accelerator=$acc --trainer.devices=$per_node --trainer.num_nodes=$nodes --trainer.strategy=$strategy"
}

# Run one clods-pl subcommand on every task of the allocation (srun) with the trainer flags and extra overrides.
# After a requeue the stage resumes from its newest checkpoint made with the same settings (clods-pl's one resume
# rule, pipeline/resume.py; it prints "resuming from ...").
clods_srun_stage() {
    local stage="$1"; shift
    echo "[clods-slurm] job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}) $stage on ${SLURM_JOB_NODELIST:-?}"
    # shellcheck disable=SC2046,SC2086
    srun --kill-on-bad-exit=1 "${CLODS_EXEC[@]}" "${CLODS_CLI[@]}" "$stage" --config "$CLODS_CONFIG" \
        --run_dir "$CLODS_RUN" $(clods_trainer_args) "$@" $CLODS_EXTRA_ARGS
}
