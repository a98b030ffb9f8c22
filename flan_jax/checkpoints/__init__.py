"""The checkpoint layer: orbax save and walk-back restore, a step's files and manifest, the
one-trainer-per-MODEL_DIR lock, and the one parameter shape check. Knows nothing of models."""
