"""`flan-jax train` for tests/data_resume_test.py: one data scenario, optionally under TFDS mocks.

Usage: python tests/data_resume_worker.py SCENARIO [train flags...]. SCENARIO "tfds_files" runs
under `tfds.testing.mock_data` (the trainer process itself must be mocked) and registers a
mixture of a FLAN 2021 TFDS task with GLUE TSV, T0 JSONL and CoT TSV tasks; "flan_tiny" uses
the embedded collection. With FLAN_JAX_TEST_HANG_AFTER=N the process blocks once checkpoint N
is on disk (printing "CHECKPOINT N DONE"), so the test can SIGKILL it at a known point.
"""

import os
import sys
import time

MIXTURE = "data_resume_mix"
MEMBERS = (
    "rte_zs_opt",  # FLAN 2021, TFDS (read through tf.data.Dataset.from_generator)
    "glue_rte_zs_opt",  # GLUE TSV
    "t0_cosmos_qa_no_prompt_text_zs_noopt",  # T0 JSONL
    "cot_creak_cot",  # CoT TSV
)


def _hang_after_checkpoint(step_to_hang: int) -> None:
    from flan_jax.checkpoints import manager as checkpoints

    save = checkpoints.Checkpointer.save

    def save_then_hang(self, step, state, data_iterator=None):
        save(self, step, state, data_iterator)
        if step == step_to_hang:
            self.wait()
            print(f"CHECKPOINT {step} DONE", flush=True)
            time.sleep(600)

    checkpoints.Checkpointer.save = save_then_hang


class _SandboxFs:
    """Stands in for TFDS's MockFs, which patches `tf.io.gfile`/`epath` for the whole process
    while a mocked `as_dataset` runs. Our FLAN 2021 sources call `as_dataset` from a tf.data
    thread, so the trainer's own checkpoint writes raced into MockFs's temporary folder
    (FileNotFoundError on the data position). Here the builder's data_dir is a real folder
    under $TFDS_DATA_DIR, which the test points into its tmp_path."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_file(self, path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "a").close()


def main(scenario: str, argv: list[str]) -> int:
    import flan_jax.registry  # noqa: F401  (registers the shipped tasks and mixtures)
    from flan_jax.cli import train
    from flan_jax.data import mixtures

    if os.environ.get("FLAN_JAX_TEST_HANG_AFTER"):
        _hang_after_checkpoint(int(os.environ["FLAN_JAX_TEST_HANG_AFTER"]))
    if scenario == "flan_tiny":
        return train.main(argv)
    if scenario != "tfds_files":
        raise SystemExit(f"unknown scenario {scenario!r}; use tfds_files or flan_tiny")
    import tensorflow_datasets as tfds
    from tensorflow_datasets.testing import mocking

    mocking.test_utils.MockFs = _SandboxFs
    mixtures.register_mixture_spec({"name": MIXTURE, "members": list(MEMBERS)})
    with tfds.testing.mock_data(num_examples=16):
        return train.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
