#!/usr/bin/env bash
# `openwit train` on one machine with N GPUs: torchrun starts one process per GPU (DDP over NCCL;
# gloo when there is no GPU). Every setting is an environment variable with a default; anything
# else for `openwit train` (or Beam's --s3_* / GCS flags) goes in OPENWIT_TRAIN_EXTRA_ARGS
# (split on whitespace) or after the script's name ("$@", passed as given).
#
#   OPENWIT_SHARDS=s3://BUCKET/corpus/shards OPENWIT_OUTPUT=s3://BUCKET/runs/b32 \
#   OPENWIT_GPUS=8 infra/train/single_node.sh --s3_region_name us-east-1
#
# --resume is always passed: run the same line again after a crash, a reboot or a preemption and
# training continues from OUTPUT/checkpoints/latest.pt (a finished run ends at once).
# Credentials never go on this line: boto3's chain (AWS_* variables, ~/.aws, an instance or pod
# role) or Google's (GOOGLE_APPLICATION_CREDENTIALS, a VM's service account). See README.md.
set -euo pipefail

shards=${OPENWIT_SHARDS:-out/shards}
output=${OPENWIT_OUTPUT:-runs/clip}
model=${OPENWIT_MODEL:-vit-b-32}
batch_size=${OPENWIT_BATCH_SIZE:-256}          # per GPU: the global batch is this x GPUs
epochs=${OPENWIT_EPOCHS:-32}
workers=${OPENWIT_WORKERS:-8}                  # DataLoader workers per GPU
checkpoint_every=${OPENWIT_CHECKPOINT_EVERY:-250}  # steps; what a preemption can cost at most
max_restarts=${OPENWIT_MAX_RESTARTS:-0}        # torchrun's own restarts of the process group
torchrun=${OPENWIT_TORCHRUN:-torchrun}
openwit=${OPENWIT_BIN:-openwit}

if [[ -n ${OPENWIT_GPUS:-} ]]; then
    gpus=$OPENWIT_GPUS
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    gpus=$(nvidia-smi -L | grep -c '^GPU ' || true)
fi
if [[ ${gpus:-0} == 0 ]]; then
    gpus=1
fi

extra=()
if [[ -n ${OPENWIT_TRAIN_EXTRA_ARGS:-} ]]; then
    read -r -a extra <<<"$OPENWIT_TRAIN_EXTRA_ARGS"
fi

echo "single_node.sh: $gpus process(es), model $model, batch $batch_size per process" \
     "(global $((batch_size * gpus))), shards $shards -> $output" >&2

# exec: torchrun becomes this process, so a SIGTERM (docker stop, kubelet, systemd) reaches it
# and it passes the signal on to every rank.
exec "$torchrun" --standalone --nnodes=1 --nproc-per-node="$gpus" \
    --max-restarts="$max_restarts" --no-python \
    "$openwit" train \
    --shards "$shards" --output "$output" \
    --model "$model" --batch-size "$batch_size" --epochs "$epochs" \
    --workers "$workers" --checkpoint-every "$checkpoint_every" \
    --resume \
    ${extra[@]+"${extra[@]}"} "$@"
