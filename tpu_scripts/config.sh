#!/usr/bin/env bash
# Shared settings and helpers for tpu_scripts/*.sh (sourced, never run).
#
# Every setting is an environment variable; put yours in a file and point
# TPU_ENV at it (`TPU_ENV=my_tpu.env tpu_scripts/create.sh`), or export them.
# A setting in the environment wins over the TPU_ENV file, which wins over
# the defaults below.
#
#   PROJECT           Google Cloud project id                     (required)
#   ZONE              TPU zone, e.g. us-central2-b, us-west4-a    (required)
#   TPU_NAME          TPU VM / node name; with NUM_SLICES > 1 the node prefix,
#                     slices are named TPU_NAME-0 .. TPU_NAME-(NUM_SLICES-1)
#                                                                 (required)
#   ACCELERATOR_TYPE  v4-32, v5litepod-16, v5p-64, v6e-16, ...    (create.sh)
#   RUNTIME_VERSION   TPU software version; default from ACCELERATOR_TYPE:
#                     v4 tpu-ubuntu2204-base, v5e v2-alpha-tpuv5-lite,
#                     v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e
#   PROVISIONING      on-demand (default) | spot | preemptible
#   QUEUED            1 = create through a queued resource (required for
#                     NUM_SLICES > 1); 0 = direct `tpu-vm create` (default)
#   QUEUED_RESOURCE   queued resource id (default TPU_NAME-qr)
#   NUM_SLICES        multi-slice: number of slices (default 1)
#   NUM_WORKERS       hosts per slice (default from ACCELERATOR_TYPE; logs.sh fetch)
#   REMOTE_DIR        working directory on every worker (default flan_jax, under $HOME)
#   DRY_RUN           1 = print the gcloud commands instead of running them
#
# Multi-slice (NUM_SLICES > 1): slices come from one queued resource with
# --node-count/--node-prefix; Cloud TPU sets MEGASCALE_COORDINATOR_ADDRESS,
# MEGASCALE_NUM_SLICES, MEGASCALE_SLICE_ID on the workers and JAX joins the
# slices over DCN. Every script then acts on every slice. Put the 'data' mesh
# axis across slices (see docs/tpu.md).

TPU_SETTINGS=(PROJECT ZONE TPU_NAME ACCELERATOR_TYPE RUNTIME_VERSION PROVISIONING QUEUED
  QUEUED_RESOURCE NUM_SLICES NUM_WORKERS REMOTE_DIR DRY_RUN VALID_UNTIL RESERVED
  FLAN_JAX_WHEEL FLAN_JAX_REF FLAN_JAX_REPO COMMAND JOB_NAME FOREGROUND LAUNCH_ENV
  MODE WORKER LOCAL_DIR)

if [[ -n "${TPU_ENV:-}" ]]; then
  if [[ ! -f "${TPU_ENV}" ]]; then
    echo "error: TPU_ENV=${TPU_ENV} is not a file; point it at your settings file or unset it" >&2
    exit 2
  fi
  # A setting given on the command line (the environment) wins over the file.
  declare -A from_env=()
  for name in "${TPU_SETTINGS[@]}"; do
    if [[ -n "${!name+set}" ]]; then from_env["${name}"]="${!name}"; fi
  done
  # shellcheck source=/dev/null
  source "${TPU_ENV}"
  for name in "${!from_env[@]}"; do printf -v "${name}" '%s' "${from_env[${name}]}"; done
  unset from_env name
fi

: "${PROVISIONING:=on-demand}"
: "${QUEUED:=0}"
: "${NUM_SLICES:=1}"
: "${REMOTE_DIR:=flan_jax}"
: "${DRY_RUN:=0}"

# die MESSAGE: print an error and stop.
die() {
  echo "error: $*" >&2
  exit 2
}

# require_vars NAME...: fail up front, naming every missing setting at once.
require_vars() {
  local missing=() name
  for name in "$@"; do
    [[ -n "${!name:-}" ]] || missing+=("${name}")
  done
  if ((${#missing[@]})); then
    die "missing required setting(s): ${missing[*]}; export them or put them in a file named by TPU_ENV (see tpu_scripts/config.sh)"
  fi
}

# check_settings: validate the values shared by every script.
check_settings() {
  require_vars PROJECT ZONE TPU_NAME
  [[ "${NUM_SLICES}" =~ ^[1-9][0-9]*$ ]] ||
    die "NUM_SLICES=${NUM_SLICES} must be a positive integer"
  [[ "${DRY_RUN}" == 0 || "${DRY_RUN}" == 1 ]] ||
    die "DRY_RUN=${DRY_RUN} must be 0 or 1"
  [[ "${REMOTE_DIR}" =~ ^[A-Za-z0-9_./-]+$ ]] ||
    die "REMOTE_DIR=${REMOTE_DIR} must be a plain path under \$HOME (letters, digits, _ . / -)"
}

# quote_words WORD...: shell-quote each word like Python's shlex.quote, joined by spaces.
quote_words() {
  local out=() word
  for word in "$@"; do
    if [[ -n "${word}" && "${word}" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      out+=("${word}")
    else
      out+=("'${word//\'/\'\"\'\"\'}'")
    fi
  done
  echo "${out[*]}"
}

# run_cmd COMMAND...: run it, or with DRY_RUN=1 print it (one quoted line on stdout).
run_cmd() {
  if [[ "${DRY_RUN}" == 1 ]]; then
    quote_words "$@"
  else
    "$@"
  fi
}

# default_runtime_version ACCELERATOR_TYPE: the TPU software version for that generation.
default_runtime_version() {
  case "$1" in
    v2-* | v3-* | v4-*) echo "tpu-ubuntu2204-base" ;;
    v5litepod-* | v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) die "ACCELERATOR_TYPE=$1 is not a known TPU type (v4-32, v5litepod-16, v5p-64, v6e-16, ...); set RUNTIME_VERSION explicitly" ;;
  esac
}

# default_num_workers ACCELERATOR_TYPE: hosts per slice (v2-v5p count cores, 8 per host;
# v5e/v6e count chips, 8 on a single host, 4 per host on multi-host slices).
default_num_workers() {
  local size="${1##*-}"
  [[ "${size}" =~ ^[0-9]+$ ]] || die "ACCELERATOR_TYPE=$1 has no size suffix like -32; set NUM_WORKERS"
  case "$1" in
    v5litepod-* | v5e-* | v6e-*) if ((size <= 8)); then echo 1; else echo $((size / 4)); fi ;;
    *) if ((size <= 8)); then echo 1; else echo $((size / 8)); fi ;;
  esac
}

# tpu_nodes: the TPU VM names this job runs on (one per slice).
tpu_nodes() {
  local i
  if ((NUM_SLICES == 1)); then
    echo "${TPU_NAME}"
  else
    for ((i = 0; i < NUM_SLICES; i++)); do echo "${TPU_NAME}-${i}"; done
  fi
}

# ssh_all WORKER REMOTE_COMMAND: run a shell command on WORKER (all, or an index) of every slice.
ssh_all() {
  local worker="$1" remote="$2" node nodes
  mapfile -t nodes < <(tpu_nodes)
  for node in "${nodes[@]}"; do
    run_cmd gcloud compute tpus tpu-vm ssh "${node}" --project="${PROJECT}" --zone="${ZONE}" \
      --worker="${worker}" --command="${remote}"
  done
}
