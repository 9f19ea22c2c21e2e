#!/bin/bash
# One per node (srun task): torchrun for this node's GPUs, joined to the others by c10d
# rendezvous on the first node. Started by common.sh, which exports PYTHON, GPUS_PER_NODE,
# RDZV_ADDR, RDZV_PORT, RDZV_NNODES and TRITON_CACHE_ROOT.
#
# torchrun does not pass SIGUSR1 on to its workers, and the default action of SIGUSR1 would kill
# it, leaving Slurm to kill the workers mid-checkpoint. Ignoring it here (inherited across exec)
# keeps torchrun alive while the workers, which Slurm signals directly (it signals every process
# of the step), checkpoint and exit 0; torchrun then exits 0 as well.
trap '' USR1
set -u
# The first node hosts the rendezvous store: deciding by hostname would make both "nodes" of a
# one-machine test (and hosts known by several names) try to host it.
is_host=0
[ "${SLURM_NODEID:-0}" = 0 ] && is_host=1
# The workers of every node reach rank 0's node at the address its torchrun announces (their
# MASTER_ADDR). Unless told, torchrun announces its host's FQDN, which need not resolve on the
# other nodes; this node's NodeAddr is what slurmd itself is reached at.
node=${SLURMD_NODENAME:-$(hostname -s)}
node_addr=${NODE_ADDR:-$(scontrol show node "$node" 2>/dev/null | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p')}
node_addr=${node_addr:-$(hostname -s)}
echo "node $node (node id ${SLURM_NODEID:-0}, address $node_addr): torchrun with $GPUS_PER_NODE processes, rendezvous $RDZV_ADDR:$RDZV_PORT"
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$RDZV_NNODES" --nproc-per-node="$GPUS_PER_NODE" \
    --rdzv-backend=c10d --rdzv-endpoint="$RDZV_ADDR:$RDZV_PORT" --rdzv-id="hope-$SLURM_JOB_ID" \
    --rdzv-conf="is_host=$is_host" --local-addr="$node_addr" --max-restarts=0 \
    --no-python bash "$(dirname "$0")/worker.sh" "$@"
