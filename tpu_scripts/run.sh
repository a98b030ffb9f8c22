#!/usr/bin/env bash
# Usage: [TPU_ENV=my_tpu.env] [DRY_RUN=1] [WORKER=all] tpu_scripts/run.sh 'COMMAND'
#
# Run a shell command on every worker of every slice at once (or on WORKER=i only),
# from the REMOTE_DIR working directory with flan_jax's venv active when it exists.
#   Required: PROJECT, ZONE, TPU_NAME
# Examples:
#   tpu_scripts/run.sh 'python -c "import jax; print(jax.device_count())"'
#   tpu_scripts/run.sh 'pkill -f "flan-jax train" || true'   # stop a job
set -euo pipefail
# shellcheck source=tpu_scripts/config.sh
source "$(dirname "${BASH_SOURCE[0]}")/config.sh"

(($# == 1)) || die "run.sh takes one argument, the command (got $#); quote it: tpu_scripts/run.sh 'nproc'"
[[ -n "$1" ]] || die "run.sh: the command is empty"
check_settings
: "${WORKER:=all}"

remote="mkdir -p ~/${REMOTE_DIR} && cd ~/${REMOTE_DIR} && { [ ! -f venv/bin/activate ] || . venv/bin/activate; } && $1"
ssh_all "${WORKER}" "${remote}"
