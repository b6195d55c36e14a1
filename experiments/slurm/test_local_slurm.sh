#!/bin/bash
# End-to-end SLURM check on ONE machine (make test-slurm): installs slurm-wlm + munge with apt if missing (root),
# starts slurmctld + slurmd for this host in a temp dir, then
#   1. submits a tiny Lightning DDP job (2 CPU tasks, gloo) with sbatch --wait and checks both ranks trained;
#   2. requeue: sends SIGUSR1 to a running DDP job; Lightning saves an HPC checkpoint and requeues it; the
#      restarted job resumes from that checkpoint and finishes;
#   3. when the clods-pl CLI is installed: submits the tiny pipeline with submit_pipeline.sh (2 CPU tasks per job,
#      stage 2 as a 2-task array), waits for the chain and checks the run directory's outputs.
# The daemons it started are ALWAYS stopped (trap), by PID. Env: CLODS_SLURM_SKIP_PIPELINE=1 skips step 3;
# CLODS_SLURM_KEEP=1 keeps the temp dir; CONFIG (default experiments/flag_tiny.yaml).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3
CONFIG="${CONFIG:-experiments/flag_tiny.yaml}"
HOST="$(hostname -s)"
NCPU=2
WORK="$(mktemp -d /tmp/clods-slurm.XXXXXX)"
PIDS=()

log() { echo "[test_local_slurm] $*"; }
fail() { echo "[test_local_slurm] FAILED: $*" >&2; exit 1; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM  # run once (a signal would otherwise run it again on EXIT, against stopped daemons)
    if [[ -n "${SLURM_CONF:-}" && ${#PIDS[@]} -gt 0 ]] && command -v scancel >/dev/null; then
        # our private controller: cancel what is left and let slurmd reap the job steps before stopping it
        timeout 10 scancel --user="$(id -un)" 2>/dev/null || true
        for _ in $(seq 150); do [[ -z "$(squeue -h -o %i 2>/dev/null)" ]] && break; sleep 0.2; done
    fi
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    # job-step processes of our temp dir that outlived slurmd (only ours: they name $WORK), by PID
    for pid in $(pgrep -f "$WORK/" 2>/dev/null || true); do [[ $pid != "$$" ]] && kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    if [[ $rc -ne 0 ]]; then
        for f in "$WORK"/log/*.log; do [[ -f "$f" ]] && { echo "== $f"; tail -n 20 "$f"; }; done
        for f in "$WORK"/jobs/*.out "$WORK"/run/slurm/*.out; do [[ -f "$f" ]] && { echo "== $f"; tail -n 40 "$f"; }; done
    fi
    if [[ -z "${CLODS_SLURM_KEEP:-}" ]]; then rm -rf "$WORK"; else log "kept $WORK"; fi
    exit $rc
}
trap cleanup EXIT INT TERM

# ---------------------------------------------------------------- install + daemons
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    [[ $(id -u) -eq 0 ]] || fail "slurm-wlm/munge are not installed and this is not root; apt-get install -y slurm-wlm munge"
    log "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq slurm-wlm munge >/dev/null
fi
[[ $(id -u) -eq 0 ]] || fail "the local controller runs as SlurmUser=root; run as root (e.g. in the dev container)"

if ! (munge -n | unmunge) >/dev/null 2>&1; then
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge && chown munge:munge /run/munge /var/lib/munge /var/log/munge
    log "starting munged"
    runuser -u munge -- munged --force
    for _ in $(seq 50); do (munge -n | unmunge) >/dev/null 2>&1 && break; sleep 0.1; done
    (munge -n | unmunge) >/dev/null 2>&1 || fail "munged does not answer (see /var/log/munge/munged.log)"
    MUNGED_PID="$(cat /run/munge/munged.pid 2>/dev/null || true)"
    [[ -n "$MUNGED_PID" ]] && PIDS+=("$MUNGED_PID")
fi

mkdir -p "$WORK"/{state,spool,log,jobs}
export SLURM_CONF="$WORK/slurm.conf"
cat > "$SLURM_CONF" <<CONF
ClusterName=clods-local
SlurmctldHost=$HOST
AuthType=auth/munge
AuthInfo=cred_expire=10
SlurmUser=root
SlurmctldPort=$((20000 + RANDOM % 20000))
SlurmdPort=$((40000 + RANDOM % 20000))
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=7200
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$HOST CPUs=$NCPU RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
log "starting slurmctld + slurmd ($WORK)"
slurmctld -D -f "$SLURM_CONF" >"$WORK/log/slurmctld.out" 2>&1 &
PIDS+=($!)
slurmd -D -f "$SLURM_CONF" >"$WORK/log/slurmd.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    state="$(sinfo -h -n "$HOST" -o %t 2>/dev/null || true)"
    [[ "$state" == idle* ]] && break
    sleep 0.2
done
[[ "$state" == idle* ]] || fail "node $HOST is not idle (sinfo: '$state')"
log "node $HOST idle"

# job_state JOBID -> COMPLETED | FAILED | ... (scontrol keeps finished jobs for MinJobAge seconds)
job_state() { { scontrol show job "$1" 2>/dev/null || echo "JobState=PURGED"; } | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' | sort -u | tr '\n' ' '; }

# ---------------------------------------------------------------- 1. tiny Lightning DDP job
cat > "$WORK/ddp_job.py" <<'PYJOB'
"""Tiny Lightning DDP job: 2 processes (srun tasks), gloo, a few steps; checkpoints every step; rank files."""
import json, os, sys, time
import lightning as L, torch

out, steps, sleep = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])

class M(L.LightningModule):
    def __init__(self):
        super().__init__(); self.lin = torch.nn.Linear(4, 1)
    def training_step(self, batch, _):
        time.sleep(sleep)
        return self.lin(batch[0]).pow(2).mean()
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(64, 4)), batch_size=4)
ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=out, save_last=True, every_n_train_steps=1)
trainer = L.Trainer(accelerator="cpu", devices=2, num_nodes=1, strategy="ddp", max_steps=steps, default_root_dir=out,
                    callbacks=[ckpt], enable_progress_bar=False, enable_model_summary=False, logger=False)
resume = os.path.join(out, "last.ckpt") if os.path.exists(os.path.join(out, "last.ckpt")) else None
trainer.fit(M(), data, ckpt_path=resume)
env = type(trainer.strategy.cluster_environment).__name__
info = {"rank": trainer.global_rank, "world": trainer.world_size, "env": env, "step": trainer.global_step,
        "restart": int(os.environ.get("SLURM_RESTART_COUNT", "0")), "resumed_from": resume}
with open(os.path.join(out, f"rank{trainer.global_rank}.json"), "w") as f:
    json.dump(info, f)
PYJOB

cat > "$WORK/ddp_job.sbatch" <<SB
#!/bin/bash
#SBATCH --job-name=ddp-smoke
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=1
#SBATCH --signal=SIGUSR1@90
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=$WORK/jobs/%x-%j.out
export OMP_NUM_THREADS=1
srun "$PY" "$WORK/ddp_job.py" "\$1" "\$2" "\$3"
SB

log "1/3 tiny Lightning DDP job (2 tasks, gloo)"
t0=$SECONDS
sbatch --wait "$WORK/ddp_job.sbatch" "$WORK/smoke" 3 0 >/dev/null || fail "DDP smoke job failed"
"$PY" - "$WORK/smoke" <<'PYCHK' || fail "DDP smoke job outputs"
import json, sys
r = [json.load(open(f"{sys.argv[1]}/rank{i}.json")) for i in (0, 1)]
assert all(x["world"] == 2 and x["env"] == "SLURMEnvironment" and x["step"] == 3 for x in r), r
print("[test_local_slurm] ranks:", r)
PYCHK
log "DDP smoke job passed in $((SECONDS - t0)) s"

# ---------------------------------------------------------------- 2. preemption: SIGUSR1 -> requeue -> resume
log "2/3 requeue on SIGUSR1 and resume"
jid="$(sbatch --parsable "$WORK/ddp_job.sbatch" "$WORK/requeue" 40 0.25)"
for _ in $(seq 300); do [[ -f "$WORK/requeue/last.ckpt" ]] && break; sleep 0.2; done
[[ -f "$WORK/requeue/last.ckpt" ]] || fail "requeue job wrote no checkpoint"
sleep 1
scancel --signal=USR1 "$jid"   # what SLURM sends 90 s before the time limit (--signal=SIGUSR1@90)
for _ in $(seq 1500); do  # a requeued job becomes eligible after AuthInfo cred_expire (10 s here, 120 s default)
    [[ -f "$WORK/requeue/rank0.json" && -f "$WORK/requeue/rank1.json" ]] && break
    sleep 0.2
done
for _ in $(seq 150); do [[ -z "$(squeue -h -j "$jid" -o %i 2>/dev/null)" ]] && break; sleep 0.2; done
[[ "$(job_state "$jid")" == "COMPLETED " ]] || fail "requeued job $jid ended $(job_state "$jid")"
"$PY" - "$WORK/requeue" <<'PYCHK' || fail "requeued job did not resume and finish"
import json, sys
r = [json.load(open(f"{sys.argv[1]}/rank{i}.json")) for i in (0, 1)]
assert all(x["restart"] >= 1 and x["step"] == 40 and x["resumed_from"] for x in r), r
print("[test_local_slurm] after requeue:", r)
PYCHK
log "requeue + resume passed"

# ---------------------------------------------------------------- 3. the tiny clods-pl pipeline
if [[ -n "${CLODS_SLURM_SKIP_PIPELINE:-}" ]]; then
    log "3/3 skipped (CLODS_SLURM_SKIP_PIPELINE set)"
elif ! "$PY" -c "import clods_pl.pipeline.cli" 2>/dev/null || [[ ! -f "$ROOT/$CONFIG" ]]; then
    log "3/3 skipped: the clods-pl CLI (clods_pl.pipeline.cli) or $CONFIG is not there yet"
else
    log "3/3 tiny pipeline through submit_pipeline.sh ($CONFIG)"
    cd "$ROOT"
    dataset="$("$PY" -c "from clods_pl.pipeline.slurm import stage2_shard_source as s; print(s('$CONFIG')[0])")"
    if [[ ! -f "$dataset/dataset.json" ]]; then
        log "generating the tiny dataset into $dataset"
        "$ROOT/.venv/bin/clods-pl" data generate --preset tiny --out "$dataset"
    fi
    t0=$SECONDS
    export CLODS_GPUS_PER_NODE=0 CLODS_CPU_TASKS_PER_NODE=2 CLODS_CPUS_PER_TASK=1 CLODS_NODES=1 \
           CLODS_STAGE2_SHARDS=2 CLODS_STAGE2_TASKS_PER_NODE=1 CLODS_IMAGE= WANDB_MODE=offline
    bash "$HERE/submit_pipeline.sh" "$CONFIG" "$WORK/run" | tee "$WORK/submitted.txt"
    ids="$(awk '{print $2}' "$WORK/submitted.txt")"
    for _ in $(seq 3600); do
        [[ -z "$(squeue -h -o %i 2>/dev/null)" ]] && break
        # a failed job leaves its dependants pending forever: stop waiting and report the failure below
        squeue -h -o %r 2>/dev/null | grep -q DependencyNeverSatisfied && { scancel --user="$(id -un)"; sleep 2; break; }
        sleep 1
    done
    for id in $ids; do
        st="$(job_state "$id")"
        log "job $id: $st"
        [[ "$st" == "COMPLETED " ]] || fail "job $id ended $st (logs in $WORK/run/slurm)"
    done
    "$PY" - "$WORK/run" <<'PYCHK' || fail "pipeline outputs"
import glob, json, sys
run = sys.argv[1]
manifest = json.load(open(f"{run}/manifest.json"))
stages = manifest.get("stages", {})
for s in ("stage1", "stage2", "stage3"):
    assert stages.get(s, {}).get("status") == "done", (s, stages.get(s))
meshes = glob.glob(f"{run}/stage2/meshes/*.npz")
assert meshes, "no stage-2 mesh caches"
assert glob.glob(f"{run}/stage3/*.ckpt") or glob.glob(f"{run}/stage3/**/*.ckpt", recursive=True), "no stage-3 ckpt"
assert glob.glob(f"{run}/eval/metrics.json") or glob.glob(f"{run}/eval/*.json"), "no eval metrics"
print(f"[test_local_slurm] manifest stages done; {len(meshes)} mesh caches")
PYCHK
    log "tiny pipeline passed in $((SECONDS - t0)) s"
fi
echo "LOCAL SLURM TEST PASSED"
