#!/usr/bin/env bash
# Usage: [TPU_ENV=my_tpu.env] [DRY_RUN=1] tpu_scripts/delete.sh
#
# Delete the TPU VM(s) made by create.sh (no prompt). With QUEUED=1, delete the
# queued resource and its slices (--force) instead. Checkpoints in gs:// stay.
#   Required: PROJECT, ZONE, TPU_NAME
#   Optional: QUEUED, QUEUED_RESOURCE, NUM_SLICES
set -euo pipefail
# shellcheck source=tpu_scripts/config.sh
source "$(dirname "${BASH_SOURCE[0]}")/config.sh"

check_settings
: "${QUEUED_RESOURCE:=${TPU_NAME}-qr}"

if [[ "${QUEUED}" == 1 ]]; then
  run_cmd gcloud compute tpus queued-resources delete "${QUEUED_RESOURCE}" \
    --project="${PROJECT}" --zone="${ZONE}" --force --quiet
else
  mapfile -t nodes < <(tpu_nodes)
  for node in "${nodes[@]}"; do
    run_cmd gcloud compute tpus tpu-vm delete "${node}" --project="${PROJECT}" --zone="${ZONE}" --quiet
  done
fi
