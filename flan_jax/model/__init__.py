"""The model layer: Flax layers and networks, the T5X-style model wrappers (loss, scoring,
decoding) and analytic FLOPs. Imports only jax, flax and numpy (seqio lazily)."""
