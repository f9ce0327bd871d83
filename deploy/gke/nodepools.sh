#!/usr/bin/env bash
# Creates storyreel's two node pools in an existing GKE Standard cluster (1.33 or later):
#
#   storyreel-cpu  CPU jobs; autoscaled from 0
#   storyreel-gpu  GPU jobs; autoscaled from 0; tainted nvidia.com/gpu=present:NoSchedule so
#                  that only pods that ask for a GPU land there
#
# Both pools put their nodes' ephemeral storage (emptyDir volumes, container writable layers,
# logs) on Local SSD (--ephemeral-storage-local-ssd); GKE then labels the nodes
# cloud.google.com/gke-ephemeral-storage-local-ssd=true. That is all storyreel needs from a
# node: every job's inputs and outputs travel through Cloud Storage, except the PNG frames,
# which render, compose and preview of a story share in ONE pod (the Snakemake group `video`,
# frames declared temp(..., group_jobs=True)), on that pod's emptyDir. The executor gives that
# pod the node selector above and an ephemeral-storage request from its disk_mb, so the frames
# land on Local SSD, and the scheduler and autoscaler see how much room they need. Every other
# job can run on any node of either pool, and a story's jobs need not share a node. No volume
# is provisioned, bound or cleaned up: the frames go when the pod goes.
#
# Usage (the cluster must exist, with Workload Identity, e.g.
#   gcloud container clusters create storyreel --location=LOCATION \
#     --workload-pool=PROJECT.svc.id.goog --release-channel=regular):
#
#   PROJECT=my-project LOCATION=us-central1 deploy/gke/nodepools.sh
#   DRY_RUN=1 PROJECT=p LOCATION=l deploy/gke/nodepools.sh   # print the commands only
#
# Every setting below can be overridden from the environment. Machine types of the first and
# second generation (n1, n2, ...) take an SSD count (375 GB each); third-generation ones come
# with their SSDs built in (the -lssd types such as c3-standard-8-lssd) and take the bare flag:
# set CPU_SSD_COUNT= or GPU_SSD_COUNT= to empty for those.
#
# GKE's cluster autoscaler brings a pool up from zero for a pending pod that fits its nodes
# (Local SSD ephemeral storage and its label included) and takes idle nodes away again.
set -euo pipefail

: "${PROJECT:?set PROJECT to the Google Cloud project id}"
: "${LOCATION:?set LOCATION to the region or zone of the cluster, e.g. us-central1}"
CLUSTER=${CLUSTER:-storyreel}

CPU_POOL=${CPU_POOL:-storyreel-cpu}
CPU_MACHINE=${CPU_MACHINE:-n2-standard-8}
CPU_SSD_COUNT=${CPU_SSD_COUNT-1}        # 375 GB per SSD; empty for -lssd machine types
CPU_MAX_NODES=${CPU_MAX_NODES:-4}       # across all zones

GPU_POOL=${GPU_POOL:-storyreel-gpu}
GPU_MACHINE=${GPU_MACHINE:-n1-standard-8}
GPU_TYPE=${GPU_TYPE:-nvidia-tesla-t4}
GPU_COUNT=${GPU_COUNT:-1}
GPU_SSD_COUNT=${GPU_SSD_COUNT-1}
GPU_MAX_NODES=${GPU_MAX_NODES:-2}
GPU_ZONES=${GPU_ZONES:-}                # zones that offer GPU_TYPE; empty: the cluster's zones

NODE_SERVICE_ACCOUNT=${NODE_SERVICE_ACCOUNT:-}  # empty: the project's default compute account
DRY_RUN=${DRY_RUN:-}

# Runs a command, or only prints it when DRY_RUN is set (quoting only words that need it).
run() {
  if [ -n "$DRY_RUN" ]; then
    local word line=""
    for word in "$@"; do
      case $word in
        *[!A-Za-z0-9_./:=,@%+-]* | "") line+=" $(printf '%q' "$word")" ;;
        *) line+=" $word" ;;
      esac
    done
    printf '%s\n' "${line# }"
  else
    "$@"
  fi
}

# --ephemeral-storage-local-ssd with a count, or bare for machine types whose SSDs are built in.
ssd_flag() {
  if [ -n "$1" ]; then
    printf -- '--ephemeral-storage-local-ssd=count=%s' "$1"
  else
    printf -- '--ephemeral-storage-local-ssd'
  fi
}

common=(
  --project="$PROJECT"
  --cluster="$CLUSTER"
  --location="$LOCATION"
  # Pools start empty and return to empty: nodes cost money only while stories run.
  --num-nodes=0
  --enable-autoscaling
  --total-min-nodes=0
  # Job pods reach Cloud Storage as the storyreel-job service account (Workload Identity).
  --workload-metadata=GKE_METADATA
  # The boot disk holds the OS and the pulled images; ephemeral storage is on the SSDs.
  --disk-type=pd-balanced
)
if [ -n "$NODE_SERVICE_ACCOUNT" ]; then
  common+=(--service-account="$NODE_SERVICE_ACCOUNT")
fi

run gcloud container node-pools create "$CPU_POOL" "${common[@]}" \
  --machine-type="$CPU_MACHINE" \
  "$(ssd_flag "$CPU_SSD_COUNT")" \
  --disk-size=100 \
  --total-max-nodes="$CPU_MAX_NODES" \
  --node-labels=storyreel/pool=cpu

gpu_zones=()
if [ -n "$GPU_ZONES" ]; then
  gpu_zones=(--node-locations="$GPU_ZONES")
fi

# gpu-driver-version=default: GKE installs the NVIDIA driver itself. GKE would add the GPU
# taint on its own as well; it is spelled out so the pool's contract is visible here. ANY lets
# the autoscaler take a GPU in whichever zone has one free.
run gcloud container node-pools create "$GPU_POOL" "${common[@]}" \
  --machine-type="$GPU_MACHINE" \
  --accelerator="type=$GPU_TYPE,count=$GPU_COUNT,gpu-driver-version=default" \
  "$(ssd_flag "$GPU_SSD_COUNT")" \
  --disk-size=200 \
  --total-max-nodes="$GPU_MAX_NODES" \
  --location-policy=ANY \
  --node-labels=storyreel/pool=gpu \
  --node-taints=nvidia.com/gpu=present:NoSchedule \
  ${gpu_zones[@]+"${gpu_zones[@]}"}  # this form survives `set -u` on bash 3.2 (macOS)

cat <<EOF
Then, once, with kubectl pointed at the cluster:
  kubectl apply -f deploy/gke/namespace.yaml
  kubectl apply -f deploy/gke/serviceaccount.yaml -f deploy/gke/rbac.yaml
and, only with align.backend: gentle (it keeps a CPU node up while it runs):
  kubectl apply -f deploy/gke/gentle.yaml
EOF
