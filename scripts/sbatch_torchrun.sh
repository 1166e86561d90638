#!/usr/bin/env bash
# One ponder stage as one Slurm job over N nodes: torchrun on every node, preemption that saves, requeue.
#
#   sbatch --nodes=4 --partition=gpu [--account=...] scripts/sbatch_torchrun.sh \
#       launch/pretrain.py recipe=pretrain_9b model.tokenizer=... data.shards=... hydra.run.dir=/shared/runs/pt9b
#
# Give `hydra.run.dir` on a filesystem every node shares: the requeued job resumes from it (resume=auto).
# Settings the job reads from the environment (export them before sbatch; sbatch passes them on):
#   PONDER_GPUS_PER_NODE  workers per node (default: the GPUs Slurm gave the node, else 1)
#   PONDER_PREEMPT_SIGNAL USR2 (default: the --signal warning below) or TERM (the cluster preempts with
#                         SIGTERM + GraceTime); the workers finish their step and save on it
#   PONDER_SETUP          shell lines run first on every node, e.g. "module load cuda/12.4; source /shared/ponder/.venv/bin/activate"
#   NCCL_*, GLOO_*        the fabric's settings (NCCL_SOCKET_IFNAME=ib0, ...), passed to the workers as they are
#SBATCH --job-name=ponder
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR2@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=ponder-%x-%j.log
set -uo pipefail

[ $# -ge 1 ] || { echo "usage: sbatch [options] $0 launch/<stage>.py [key=value ...]" >&2; exit 2; }
eval "${PONDER_SETUP:-}"
script=$1; shift
: "${SLURM_JOB_ID:?run this with sbatch}"

nodes=${SLURM_JOB_NUM_NODES:-1}
gpus=${PONDER_GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
cpus=${SLURM_CPUS_PER_TASK:-1}
master=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
# The same on every node; below Linux's ephemeral range 32768-60999 (launch/job.py does the same).
port=$((15000 + SLURM_JOB_ID % 15000))
export PONDER_PREEMPT_SIGNAL=${PONDER_PREEMPT_SIGNAL:-USR2}
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-240}  # workers' time to save on SIGTERM
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( cpus / gpus > 0 ? cpus / gpus : 1 ))}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
python=${PONDER_PYTHON:-python}

# torchrun itself must outlive USR2 (`trap "" USR2` is inherited through exec as "ignore"); its workers
# install their own handler (trainer/preemption.py), finish the step, save together and exit.
# SLURM_NODEID is expanded on each node, inside the step.
preempted=0
on_usr2() {
  preempted=1
  echo "ponder sbatch: USR2: the workers finish their step and save" >&2
  scancel --signal=USR2 "$SLURM_JOB_ID"  # every process of the job's steps, on every node
}
trap on_usr2 USR2

srun --cpus-per-task="$cpus" --kill-on-bad-exit=1 bash -c "trap '' USR2; exec $python -m torch.distributed.run \
  --nnodes=$nodes --node_rank=\$SLURM_NODEID --master_addr=$master --master_port=$port \
  --rdzv_conf timeout=${PONDER_RENDEZVOUS_TIMEOUT_S:-1800} --nproc_per_node=$gpus $(printf '%q ' "$script" "$@")" &
step=$!
# `wait` returns early when a trapped signal arrives; wait again until the step is really over.
while true; do
  wait "$step"; code=$?
  kill -0 "$step" 2>/dev/null || break
done

if [ "$preempted" = 1 ]; then
  echo "ponder sbatch: saved; requeueing job $SLURM_JOB_ID" >&2
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
exit "$code"
