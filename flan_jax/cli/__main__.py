"""`python -m flan_jax.cli`: what the `flan-jax` console script runs."""

from flan_jax.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
