"""Type aliases shared by every layer (defined here only)."""

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

Array = jax.Array
PyTree = Any  # a nest of dicts / lists / tuples with array leaves
Params = dict[str, Any]  # a parameter tree with T5X's names: {"encoder": {...}, ...}
Batch = Mapping[str, Array]  # a model batch on device, seqio's keys: encoder_input_tokens, ...
HostBatch = dict[str, np.ndarray]  # the same keys in host memory, before placement on a mesh
Example = dict[str, Any]  # one example of a source or task: field name -> value
