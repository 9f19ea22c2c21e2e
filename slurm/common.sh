# Shared body of slurm/train_*.sbatch; sourced, never run on its own. See slurm/README.md.
#
# Launch layout: one srun task per node, each running torchrun for that node's GPUs, with c10d
# rendezvous hosted by the first node of the allocation. Chosen over one srun task per GPU because
# the trainer reads RANK / LOCAL_RANK / LOCAL_WORLD_SIZE / MASTER_ADDR the way torchrun sets them
# (no SLURM_PROCID mapping to get wrong), a node-level process is needed anyway to stand between
# Slurm's signals and the workers (node.sh), and GPU binding stays one line (CUDA_VISIBLE_DEVICES
# from the node's allocation) instead of depending on the site's --gpu-bind setup.
#
# Preemption / time limit: the batch shell gets USR1 <grace> seconds early (--signal=B:USR1@...),
# forwards it to every process of the training step (workers checkpoint at the end of the
# current step and exit 0; torchrun ignores it, see node.sh), waits for the step to end, then
# requeues the job: the same job id starts this script again and the trainer resumes from the
# newest complete checkpoint in the save dir.

# What a user may set in the environment at `sbatch` time (kept across requeues, since Slurm stores
# the submission environment with the job):
#   CONFIG          trainer YAML (default: the one the sbatch script names)
#   DATA            prepared dataset folder(s), comma-separated      -> data.paths
#   TOKENIZER       tokenizer folder the data was made with           -> data.tokenizer
#   SAVE_DIR        checkpoints + metrics.jsonl (default runs/<job name>) -> train.save_dir
#   WANDB_PROJECT   W&B project (empty: no W&B)                       -> train.wandb_project
#   GPUS_PER_NODE   processes per node (default: the job's --gpus-per-node, else 8)
#   PYTHON          interpreter with hope_mega installed (default .venv/bin/python, else python3)
#   MAX_REQUEUES    stop requeueing after this many restarts (default 50)
#   REQUEUE_ON_FAILURE  1: also requeue after a crash, if that run advanced the checkpoint (default 1)
#   RESIGNAL_EVERY  seconds between repeated stop signals while waiting for the step (default 30)
# Arguments after the script name are passed to the trainer as key=value overrides.

hm_log() { echo "[launcher $(date +%H:%M:%S)] $*"; }

# The newest complete checkpoint's step (0 if none): a step_N folder counts once its manifest
# (written last, see hope_mega/checkpoint.py) is there.
hm_last_step() {
    local last=0 m n
    for m in "$1"/step_*/manifest.json; do
        [ -e "$m" ] || continue
        n=${m%/manifest.json}; n=${n##*/step_}; n=$((10#$n))
        [ "$n" -gt "$last" ] && last=$n
    done
    echo "$last"
}

hm_stop_requested=0
hm_on_usr1() {
    hm_stop_requested=1
    hm_log "USR1: asking the trainer to checkpoint and stop"
    # Without --batch this reaches every process of the job's steps but not this shell.
    scancel --signal=USR1 "$SLURM_JOB_ID"
}

hope_train() {
    local default_config=$1; shift
    set -uo pipefail
    : "${HOPE_MEGA_ROOT:?}" "${SLURM_JOB_ID:?run this through sbatch}"
    # First thing: a USR1 that arrives before the training step exists (a job whose time limit
    # is shorter than the signal's grace period gets it at once) must not kill this shell.
    trap hm_on_usr1 USR1
    cd "$HOPE_MEGA_ROOT" || exit 1

    export CONFIG=${CONFIG:-$default_config}
    if [ -z "${PYTHON:-}" ]; then
        if [ -x .venv/bin/python ]; then PYTHON=$PWD/.venv/bin/python; else PYTHON=python3; fi
    fi
    export PYTHON
    local gpus_alloc=${SLURM_GPUS_PER_NODE:-}
    gpus_alloc=${gpus_alloc##*:}  # "h100:8" -> "8"
    if [ -z "${GPUS_PER_NODE:-}" ]; then
        if [ -n "$gpus_alloc" ] && [ "$gpus_alloc" -gt 0 ] 2>/dev/null; then GPUS_PER_NODE=$gpus_alloc; else GPUS_PER_NODE=8; fi
    fi
    export GPUS_PER_NODE
    local nnodes=$SLURM_JOB_NUM_NODES
    local world=$((nnodes * GPUS_PER_NODE))

    local -a overrides=()
    if [ -n "${DATA:-}" ]; then overrides+=("data.paths=[${DATA}]"); fi
    if [ -n "${TOKENIZER:-}" ]; then overrides+=("data.tokenizer=${TOKENIZER}"); fi
    export SAVE_DIR=${SAVE_DIR:-$HOPE_MEGA_ROOT/runs/$SLURM_JOB_NAME}
    overrides+=("train.save_dir=${SAVE_DIR}")
    if [ -n "${WANDB_PROJECT:-}" ]; then overrides+=("train.wandb_project=${WANDB_PROJECT}"); fi
    overrides+=("$@")  # command-line overrides win over the environment's

    hm_log "job $SLURM_JOB_ID restart ${SLURM_RESTART_COUNT:-0} on $SLURM_JOB_NODELIST: $nnodes nodes x $GPUS_PER_NODE = $world processes"
    hm_log "config $CONFIG ${overrides[*]}"

    # One process on the batch node checks what would otherwise fail on every rank after the
    # whole allocation has started (or, for a wrong tokenizer, not fail at all).
    local resolved
    resolved=$("$PYTHON" "$HOPE_MEGA_ROOT/slurm/preflight.py" --world-size "$world" \
               --gpus-per-node "$GPUS_PER_NODE" "$CONFIG" "${overrides[@]}") || {
        hm_log "preflight failed (message above); not starting the job and not requeueing it"
        exit 2
    }
    eval "$resolved"  # PREFLIGHT_SAVE_DIR, PREFLIGHT_STEPS
    local start_step
    start_step=$(hm_last_step "$PREFLIGHT_SAVE_DIR")
    if [ "$start_step" -ge "$PREFLIGHT_STEPS" ]; then
        hm_log "$PREFLIGHT_SAVE_DIR already holds the final checkpoint (step $start_step); nothing to do"
        exit 0
    fi
    hm_log "preflight ok; newest checkpoint: step $start_step of $PREFLIGHT_STEPS"

    # Rendezvous on the first node, by address: node names need not resolve (NodeAddr is what
    # slurmd itself is reached at). The port is derived from the job id so that jobs sharing a
    # node do not collide, and stays the same across requeues.
    local head_node
    head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    export RDZV_ADDR=${RDZV_ADDR:-$(scontrol show node "$head_node" | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p')}
    export RDZV_PORT=${RDZV_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
    export RDZV_NNODES=$nnodes

    # A rank that dies on NCCL error fails the job instead of hanging it until the time limit.
    export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
    export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
    # Megatron's sequence-parallel communication relies on kernels being issued in order.
    export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
    local cpus=${SLURM_CPUS_ON_NODE:-$(nproc)}
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( cpus / GPUS_PER_NODE > 0 ? cpus / GPUS_PER_NODE : 1 ))}
    # Node-local and per rank (worker.sh appends rank<N>): ranks compiling the same kernel into one
    # shared cache directory race on its lock files, and on NFS the lock does not hold.
    export TRITON_CACHE_ROOT=${TRITON_CACHE_ROOT:-${TMPDIR:-/tmp}/triton-$(id -un)-$SLURM_JOB_ID}
    export PYTHONUNBUFFERED=1

    if [ "$hm_stop_requested" = 1 ]; then
        hm_requeue "stopped on USR1 before training started"
    fi
    srun --nodes="$nnodes" --ntasks-per-node=1 --cpus-per-task="$cpus" --kill-on-bad-exit=1 --label \
        bash "$HOPE_MEGA_ROOT/slurm/node.sh" --config "$CONFIG" "${overrides[@]}" &
    local srun_pid=$! rc resignal_pid=""
    # `wait` returns early whenever a trapped signal arrives; keep waiting until srun is gone.
    # A stop signal that reaches a worker before its handler is installed (during setup) is
    # ignored, so it is repeated until the step ends.
    while :; do
        wait "$srun_pid"; rc=$?
        if [ "$hm_stop_requested" = 1 ] && [ -z "$resignal_pid" ]; then
            ( while sleep "${RESIGNAL_EVERY:-30}"; do scancel --signal=USR1 "$SLURM_JOB_ID"; done ) &
            resignal_pid=$!
        fi
        kill -0 "$srun_pid" 2>/dev/null || break
    done
    [ -n "$resignal_pid" ] && kill "$resignal_pid" 2>/dev/null

    local end_step
    end_step=$(hm_last_step "$PREFLIGHT_SAVE_DIR")
    hm_log "training step ended with exit code $rc; newest checkpoint: step $end_step of $PREFLIGHT_STEPS"
    if [ "$end_step" -ge "$PREFLIGHT_STEPS" ]; then
        hm_log "training complete"
        exit 0
    fi
    local why=""
    if [ "$hm_stop_requested" = 1 ]; then
        why="stopped on USR1 (preemption or time limit)"
    elif [ "$rc" != 0 ] && [ "${REQUEUE_ON_FAILURE:-1}" = 1 ] && [ "$end_step" -gt "$start_step" ]; then
        # Progress since the start means the failure is not a deterministic start-up error, so
        # a restart (possibly on other nodes) is worth it; no progress would loop forever.
        why="failed with exit code $rc after advancing from step $start_step to $end_step"
    fi
    if [ -z "$why" ]; then
        hm_log "not requeueing (exit code $rc; newest checkpoint step $end_step, step $start_step at the start)"
        exit $(( rc == 0 ? 1 : rc ))
    fi
    hm_requeue "$why"
}

hm_requeue() {
    local restarts=${SLURM_RESTART_COUNT:-0}
    if [ "$restarts" -ge "${MAX_REQUEUES:-50}" ]; then
        hm_log "$1, but the job was already restarted $restarts times (MAX_REQUEUES); giving up"
        exit 1
    fi
    hm_log "$1; requeueing job $SLURM_JOB_ID (restart $((restarts + 1)))"
    scontrol requeue "$SLURM_JOB_ID" || { hm_log "scontrol requeue failed; resubmit this script unchanged to resume"; exit 1; }
    exit 0  # normally not reached: the requeue ends this shell
}
