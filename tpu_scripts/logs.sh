#!/usr/bin/env bash
# Usage: [TPU_ENV=my_tpu.env] [DRY_RUN=1] [MODE=follow|fetch] [WORKER=0] tpu_scripts/logs.sh
#
# MODE=follow (default): stream the job log of WORKER (default 0, where process 0
#   logs metrics) on the first slice; Ctrl-C stops following, not the job.
# MODE=fetch: copy the job log of every worker of every slice into LOCAL_DIR
#   (default logs/TPU_NAME) as NODE-wI.log.
#   Required: PROJECT, ZONE, TPU_NAME (fetch: ACCELERATOR_TYPE or NUM_WORKERS)
#   Optional: JOB_NAME (default train), LOCAL_DIR
# Metrics, TensorBoard events and checkpoints are in MODEL_DIR (gs://), not here.
set -euo pipefail
# shellcheck source=tpu_scripts/config.sh
source "$(dirname "${BASH_SOURCE[0]}")/config.sh"

check_settings
: "${MODE:=follow}"
: "${JOB_NAME:=train}"
[[ "${JOB_NAME}" =~ ^[A-Za-z0-9_.-]+$ ]] || die "JOB_NAME=${JOB_NAME} must use only letters, digits, _ . -"
log="${REMOTE_DIR}/logs/${JOB_NAME}.log"
mapfile -t nodes < <(tpu_nodes)

case "${MODE}" in
  follow)
    : "${WORKER:=0}"
    [[ "${WORKER}" =~ ^[0-9]+$ ]] || die "WORKER=${WORKER} must be one worker index for MODE=follow (0 is process 0)"
    run_cmd gcloud compute tpus tpu-vm ssh "${nodes[0]}" --project="${PROJECT}" --zone="${ZONE}" \
      --worker="${WORKER}" --command="tail -n +1 -F ~/${log}"
    ;;
  fetch)
    if [[ -z "${NUM_WORKERS:-}" ]]; then
      require_vars ACCELERATOR_TYPE
      NUM_WORKERS=$(default_num_workers "${ACCELERATOR_TYPE}")
    fi
    : "${LOCAL_DIR:=logs/${TPU_NAME}}"
    run_cmd mkdir -p "${LOCAL_DIR}"
    for node in "${nodes[@]}"; do
      for ((w = 0; w < NUM_WORKERS; w++)); do
        run_cmd gcloud compute tpus tpu-vm scp "${node}:${log}" "${LOCAL_DIR}/${node}-w${w}.log" \
          --project="${PROJECT}" --zone="${ZONE}" --worker="${w}"
      done
    done
    ;;
  *) die "MODE=${MODE} must be follow or fetch" ;;
esac
