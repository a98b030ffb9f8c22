#!/usr/bin/env bash
# Usage: [TPU_ENV=my_tpu.env] [DRY_RUN=1] tpu_scripts/setup.sh
#
# Install flan_jax with the `tpu` extra into ~/REMOTE_DIR/venv on every worker of
# every slice, from exactly one of:
#   FLAN_JAX_WHEEL  a wheel: a local file (copied to the workers) or a gs:// URL
#   FLAN_JAX_REF    a git ref (branch, tag or commit) of FLAN_JAX_REPO (a git URL)
#   Required: PROJECT, ZONE, TPU_NAME, and FLAN_JAX_WHEEL or FLAN_JAX_REF+FLAN_JAX_REPO
# Examples:
#   FLAN_JAX_REPO=https://github.com/ORG/flan_jax FLAN_JAX_REF=v0.1.0 tpu_scripts/setup.sh
#   python -m pip wheel --no-deps -w dist . && FLAN_JAX_WHEEL=dist/flan_jax-0.1.0-py3-none-any.whl tpu_scripts/setup.sh
# Re-running is safe: pip reinstalls into the same venv.
set -euo pipefail
# shellcheck source=tpu_scripts/config.sh
source "$(dirname "${BASH_SOURCE[0]}")/config.sh"

check_settings
: "${FLAN_JAX_WHEEL:=}" "${FLAN_JAX_REF:=}" "${FLAN_JAX_REPO:=}"
if [[ -n "${FLAN_JAX_WHEEL}" && -n "${FLAN_JAX_REF}" ]]; then
  die "set one of FLAN_JAX_WHEEL (${FLAN_JAX_WHEEL}) or FLAN_JAX_REF (${FLAN_JAX_REF}), not both"
fi

if [[ -n "${FLAN_JAX_WHEEL}" ]]; then
  [[ "${FLAN_JAX_WHEEL}" == *.whl ]] || die "FLAN_JAX_WHEEL=${FLAN_JAX_WHEEL} is not a .whl file; build one with: python -m pip wheel --no-deps -w dist ."
  wheel_name=$(basename "${FLAN_JAX_WHEEL}")
  if [[ "${FLAN_JAX_WHEEL}" == gs://* ]]; then
    fetch="gcloud storage cp $(quote_words "${FLAN_JAX_WHEEL}") . && "
  else
    [[ -f "${FLAN_JAX_WHEEL}" ]] || die "FLAN_JAX_WHEEL=${FLAN_JAX_WHEEL} does not exist; build it with: python -m pip wheel --no-deps -w dist ."
    fetch=""
  fi
  spec="./${wheel_name}[tpu]"
elif [[ -n "${FLAN_JAX_REF}" ]]; then
  require_vars FLAN_JAX_REPO
  spec="flan_jax[tpu] @ git+${FLAN_JAX_REPO}@${FLAN_JAX_REF}"
  fetch=""
else
  die "nothing to install: set FLAN_JAX_WHEEL=path/or/gs://.../flan_jax-*.whl, or FLAN_JAX_REPO=<git url> and FLAN_JAX_REF=<branch, tag or commit>"
fi

if [[ -n "${FLAN_JAX_WHEEL}" && "${FLAN_JAX_WHEEL}" != gs://* ]]; then
  mapfile -t nodes < <(tpu_nodes)
  ssh_all all "mkdir -p ~/${REMOTE_DIR}"
  for node in "${nodes[@]}"; do
    run_cmd gcloud compute tpus tpu-vm scp "${FLAN_JAX_WHEEL}" "${node}:${REMOTE_DIR}/${wheel_name}" \
      --project="${PROJECT}" --zone="${ZONE}" --worker=all
  done
fi
# python3-venv is missing from some TPU VM images: install it only when venv fails.
venv="{ python3 -m venv venv || { sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv && python3 -m venv venv; }; }"
ssh_all all "mkdir -p ~/${REMOTE_DIR} && cd ~/${REMOTE_DIR} && ${fetch}${venv} && venv/bin/pip install -q --upgrade pip && venv/bin/pip install -q $(quote_words "${spec}") && venv/bin/flan-jax --help > /dev/null && echo \"flan_jax installed on \$(hostname)\""
