#!/usr/bin/env bash
# Usage: [TPU_ENV=my_tpu.env] [DRY_RUN=1] tpu_scripts/create.sh
#
# Create a TPU VM or pod slice (or NUM_SLICES slices) named TPU_NAME.
#   Required: PROJECT, ZONE, TPU_NAME, ACCELERATOR_TYPE
#   Optional: RUNTIME_VERSION, PROVISIONING (on-demand|spot|preemptible),
#             QUEUED=1 (queued resource; needed for multi-slice), QUEUED_RESOURCE,
#             NUM_SLICES, VALID_UNTIL (queued resources: give up after this
#             duration, e.g. 6h), RESERVED=1 (use the project's reservation).
# Examples:
#   PROJECT=p ZONE=us-central2-b TPU_NAME=flan ACCELERATOR_TYPE=v4-32 tpu_scripts/create.sh
#   ... ACCELERATOR_TYPE=v5litepod-16 ZONE=us-west4-a PROVISIONING=spot QUEUED=1 tpu_scripts/create.sh
# See tpu_scripts/config.sh for every setting and docs/tpu.md for the walkthrough.
set -euo pipefail
# shellcheck source=tpu_scripts/config.sh
source "$(dirname "${BASH_SOURCE[0]}")/config.sh"

check_settings
require_vars ACCELERATOR_TYPE
: "${QUEUED_RESOURCE:=${TPU_NAME}-qr}"
: "${RESERVED:=0}"
if [[ -z "${RUNTIME_VERSION:-}" ]]; then
  RUNTIME_VERSION=$(default_runtime_version "${ACCELERATOR_TYPE}")
fi

case "${PROVISIONING}" in
  on-demand) provisioning_flags=() ;;
  spot) provisioning_flags=(--spot) ;;
  preemptible)
    [[ "${QUEUED}" == 0 ]] ||
      die "PROVISIONING=preemptible works with direct creation only (QUEUED=0); use PROVISIONING=spot with QUEUED=1"
    provisioning_flags=(--preemptible)
    ;;
  *) die "PROVISIONING=${PROVISIONING} must be on-demand, spot or preemptible" ;;
esac
if [[ "${RESERVED}" == 1 ]]; then
  provisioning_flags+=(--reserved)
fi
if ((NUM_SLICES > 1)) && [[ "${QUEUED}" != 1 ]]; then
  die "NUM_SLICES=${NUM_SLICES} needs a queued resource: set QUEUED=1"
fi

if [[ "${QUEUED}" == 1 ]]; then
  if ((NUM_SLICES > 1)); then
    node_flags=(--node-count="${NUM_SLICES}" --node-prefix="${TPU_NAME}")
  else
    node_flags=(--node-id="${TPU_NAME}")
  fi
  if [[ -n "${VALID_UNTIL:-}" ]]; then
    node_flags+=(--valid-until-duration="${VALID_UNTIL}")
  fi
  run_cmd gcloud compute tpus queued-resources create "${QUEUED_RESOURCE}" \
    --project="${PROJECT}" --zone="${ZONE}" \
    --accelerator-type="${ACCELERATOR_TYPE}" --runtime-version="${RUNTIME_VERSION}" \
    "${node_flags[@]}" "${provisioning_flags[@]}"
  if [[ "${DRY_RUN}" != 1 ]]; then
    echo "queued ${QUEUED_RESOURCE}; it is ready when its state is ACTIVE:" >&2
    echo "  gcloud compute tpus queued-resources describe ${QUEUED_RESOURCE} --project=${PROJECT} --zone=${ZONE}" >&2
  fi
else
  run_cmd gcloud compute tpus tpu-vm create "${TPU_NAME}" \
    --project="${PROJECT}" --zone="${ZONE}" \
    --accelerator-type="${ACCELERATOR_TYPE}" --version="${RUNTIME_VERSION}" \
    "${provisioning_flags[@]}"
fi
