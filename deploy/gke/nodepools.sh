#!/usr/bin/env bash
# Creates storyreel's two node pools in an existing GKE Standard cluster (1.33 or later):
#
#   storyreel-cpu  CPU jobs; autoscaled from 0
#   storyreel-gpu  GPU jobs (and every job of a story that uses one); autoscaled from 0;
#                  tainted nvidia.com/gpu=present:NoSchedule so that only pods that ask for a
#                  GPU land there
#
# Every node gets Local SSDs as raw block devices (--local-nvme-ssd-block): that is what the
# storage class in storageclass-local-ssd.yaml is built on (the file says why, and which two
# manifests from GKE's guide turn the SSDs into volumes). A story's volume lives on one node, so
# a story that uses any GPU rule has to run all of its jobs on the GPU pool; that pool therefore
# gets a machine with CPUs to spare, not the smallest one that holds the GPU.
#
# Usage (the cluster must exist, with Workload Identity, e.g.
#   gcloud container clusters create storyreel --location=LOCATION \
#     --workload-pool=PROJECT.svc.id.goog --release-channel=regular):
#
#   PROJECT=my-project LOCATION=us-central1 deploy/gke/nodepools.sh
#   DRY_RUN=1 PROJECT=p LOCATION=l deploy/gke/nodepools.sh   # print the commands only
#
# Every setting below can be overridden from the environment. Machine types of the first and
# second generation (n1, n2, ...) take an SSD count; third-generation ones infer it (the -lssd
# types such as c3-standard-8-lssd): set CPU_SSD_COUNT= or GPU_SSD_COUNT= to empty for those.
#
# The cluster autoscaler scales a pool down to zero when it is idle, but cannot bring up a
# first node for a pod whose only obstacle is an unbound local volume (the template node it
# plans with has no volumes yet). The watcher therefore sizes the pools from its backlog itself;
# autoscaling is the floor and ceiling around that.
set -euo pipefail

: "${PROJECT:?set PROJECT to the Google Cloud project id}"
: "${LOCATION:?set LOCATION to the region or zone of the cluster, e.g. us-central1}"
CLUSTER=${CLUSTER:-storyreel}

CPU_POOL=${CPU_POOL:-storyreel-cpu}
CPU_MACHINE=${CPU_MACHINE:-n2-standard-8}
CPU_SSD_COUNT=${CPU_SSD_COUNT-1}        # 375 GB per SSD
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

# --local-nvme-ssd-block with a count, or bare for machine types whose SSDs are built in.
ssd_flag() {
  if [ -n "$1" ]; then
    printf -- '--local-nvme-ssd-block=count=%s' "$1"
  else
    printf -- '--local-nvme-ssd-block'
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
  1. the RAID DaemonSet and the local volume static provisioner from GKE's guide
     "Provision and use Local SSD-backed raw block storage";
  2. kubectl apply -f deploy/gke/namespace.yaml
     kubectl apply -f deploy/gke/serviceaccount.yaml -f deploy/gke/rbac.yaml \\
       -f deploy/gke/storageclass-local-ssd.yaml
EOF
