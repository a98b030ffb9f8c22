"""flan_jax: FLAN-style instruction tuning in JAX."""
