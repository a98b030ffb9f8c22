"""The training layer: the pure train step, optimizers, the input pipeline, the train loop and
the one writer of metrics.jsonl. The step, optimizer and metrics log import without
TensorFlow or seqio."""
