#!/usr/bin/env bash
# Usage: [TPU_ENV=my_tpu.env] [DRY_RUN=1] tpu_scripts/launch.sh --gin_file=FILE [--gin_file=...] \
#          --gin.MODEL_DIR="'gs://BUCKET/DIR'" [--gin.MACRO=VALUE ...]
#
# Start the same `flan-jax COMMAND` gin job on every worker of every slice at once.
# JAX's multi-controller runtime joins the workers (jax.distributed.initialize()
# finds the TPU pod by itself); each host feeds its share of the global batch.
# Only gin flags are accepted: hyperparameters live in gin files and --gin.* macros.
# MODEL_DIR must be a gs:// path, the one place every host checkpoints to (collectively)
# and where TensorBoard events and metrics.jsonl go. Re-running the same command
# after a preemption resumes from the last checkpoint in MODEL_DIR.
#   Required: PROJECT, ZONE, TPU_NAME
#   Optional: COMMAND (train | eval | infer; default train), JOB_NAME (default COMMAND;
#             log file ~/REMOTE_DIR/logs/JOB_NAME.log), FOREGROUND=1 (stream every
#             worker's output here instead of detaching), LAUNCH_ENV (extra
#             VAR=value words for the job's environment, e.g. "LIBTPU_INIT_ARGS=...")
set -euo pipefail
# shellcheck source=tpu_scripts/config.sh
source "$(dirname "${BASH_SOURCE[0]}")/config.sh"

check_settings
: "${COMMAND:=train}"
: "${JOB_NAME:=${COMMAND}}"
: "${FOREGROUND:=0}"
: "${LAUNCH_ENV:=}"
case "${COMMAND}" in
  train | eval | infer) ;;
  *) die "COMMAND=${COMMAND} must be train, eval or infer" ;;
esac
[[ "${JOB_NAME}" =~ ^[A-Za-z0-9_.-]+$ ]] || die "JOB_NAME=${JOB_NAME} must use only letters, digits, _ . -"

gin_files=0
model_dir=""
for arg in "$@"; do
  case "${arg}" in
    --gin_file=?*) gin_files=$((gin_files + 1)) ;;
    --gin.MODEL_DIR=*) model_dir="${arg#--gin.MODEL_DIR=}" ;;
    --gin.?*=* | --gin_search_paths=?*) ;;
    *) die "launch.sh passes only gin flags to flan-jax, got '${arg}'; put hyperparameters in a gin file or a --gin.MACRO=VALUE flag" ;;
  esac
done
((gin_files > 0)) || die "no --gin_file given; e.g. --gin_file=runs/finetune.gin"
model_dir="${model_dir//\'/}"
model_dir="${model_dir//\"/}"
[[ -n "${model_dir}" ]] || die "no --gin.MODEL_DIR given; pass --gin.MODEL_DIR=\"'gs://BUCKET/DIR'\" (every host checkpoints there)"
[[ "${model_dir}" == gs://* ]] ||
  die "MODEL_DIR=${model_dir} is not a gs:// path; on a TPU slice every host must write checkpoints to the same shared directory, e.g. --gin.MODEL_DIR=\"'gs://BUCKET/DIR'\""

# --multihost: the entry point calls jax.distributed.initialize(), which finds the slice's
# hosts (and, multi-slice, the MEGASCALE_* settings) by itself on Cloud TPU.
job="env TF_CPP_MIN_LOG_LEVEL=3 ${LAUNCH_ENV:+${LAUNCH_ENV} }venv/bin/flan-jax ${COMMAND} --multihost $(quote_words "$@")"
log="logs/${JOB_NAME}.log"
pid="logs/${JOB_NAME}.pid"
busy="if [ -f ${pid} ] && kill -0 \"\$(cat ${pid})\" 2> /dev/null; then echo \"${JOB_NAME} is already running on \$(hostname) (pid \$(cat ${pid})); stop it with: tpu_scripts/run.sh 'kill \$(cat ${pid})'\" >&2; exit 1; fi"
installed="if [ ! -x venv/bin/flan-jax ]; then echo \"flan_jax is not installed in ~/${REMOTE_DIR}/venv on \$(hostname); run tpu_scripts/setup.sh\" >&2; exit 1; fi"
prologue="mkdir -p ~/${REMOTE_DIR} && cd ~/${REMOTE_DIR} && ${installed} && mkdir -p logs && ${busy} && "
if [[ "${FOREGROUND}" == 1 ]]; then
  ssh_all all "${prologue}${job} 2>&1 | tee ${log}"
else
  ssh_all all "${prologue}{ setsid nohup ${job} > ${log} 2>&1 < /dev/null & echo \$! > ${pid}; } && echo \"started ${JOB_NAME} on \$(hostname), log ~/${REMOTE_DIR}/${log}\""
  if [[ "${DRY_RUN}" != 1 ]]; then
    echo "follow it with: tpu_scripts/logs.sh   (JOB_NAME=${JOB_NAME})" >&2
  fi
fi
