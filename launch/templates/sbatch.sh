#!/bin/bash
# The sbatch script `metastate submit` renders: one torchrun agent per node (srun), rendezvous on
# the first node of the allocation, requeue on SIGUSR1. Double-brace placeholders are filled in at
# submit time; to customise, copy this file and set launch.template=PATH (docs/slurm.md).
#SBATCH --job-name={{JOB_NAME}}
#SBATCH --nodes={{NODES}}
#SBATCH --ntasks-per-node=1
#SBATCH --output={{LOG_DIR}}/slurm-%j.out
#SBATCH --error={{LOG_DIR}}/slurm-%j.err
#SBATCH --open-mode=append
#SBATCH --requeue
{{SBATCH_OPTIONS}}
set -euo pipefail
cd {{WORKDIR}}
echo "$(date -u +%FT%TZ) job $SLURM_JOB_ID restart ${SLURM_RESTART_COUNT:-0} on $SLURM_JOB_NODELIST"

# Rendezvous on the first node, at the address SLURM itself uses for it, on a port derived from the
# job id (a requeued job keeps its id; the restart count keeps each run's rendezvous separate).
first_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
rdzv_host=$(scontrol show node "$first_node" | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p')
rdzv_port=$(( 20000 + SLURM_JOB_ID % 20000 ))

# SLURM signals every task of the step, i.e. each node's torchrun agent; torchrun forwards
# SIGUSR1/SIGTERM to its workers and gives them this long to checkpoint before SIGKILL.
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT={{SHUTDOWN_TIMEOUT_S}}
exec srun --ntasks-per-node=1 --kill-on-bad-exit=1 \
  {{PYTHON}} -m torch.distributed.run \
    --nnodes={{NODES}} --nproc-per-node={{NPROC_PER_NODE}} \
    --rdzv-backend=c10d --rdzv-endpoint="$rdzv_host:$rdzv_port" \
    --rdzv-id="$SLURM_JOB_ID-${SLURM_RESTART_COUNT:-0}" \
    --signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 \
    -m launch.cli train {{TRAIN_ARGS}}
