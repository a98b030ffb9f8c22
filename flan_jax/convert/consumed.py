"""Which tensors of a Hugging Face checkpoint a conversion read: a checkpoint with tensors
left over is refused, so another architecture's weights are never silently dropped."""

from __future__ import annotations

from typing import Any

import numpy as np


class Tracked(dict):
    """The checkpoint's tensors, recording which ones the conversion read."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.used: set[str] = set()

    def __getitem__(self, name):
        self.used.add(name)
        return super().__getitem__(name)

    def get(self, name, default=None):
        if name in self:
            self.used.add(name)
        return super().get(name, default)


# recomputed from config.json, not weights; UMT5's cross-attention relative bias, which HF
# saves but never uses (cross-attention has no position bias)
_BUFFERS = ("rotary_emb.inv_freq", "EncDecAttention.relative_attention_bias.weight")


def check_consumed(path: str, tensors: Tracked, hf_config: dict[str, Any]) -> None:
    """Refuses a checkpoint with tensors the conversion did not read (e.g. a Qwen2 relabelled
    as Llama: its attention biases would be dropped and its logits silently wrong). A tensor
    equal to one that was read (T5's tied embedding copies) counts as read."""
    used = [tensors[n] for n in tensors.used if n in tensors]
    left = [
        name
        for name, value in dict.items(tensors)
        if name not in tensors.used
        and not name.endswith(_BUFFERS)
        and not any(u.shape == value.shape and np.array_equal(u, value) for u in used)
    ]
    if left:
        raise ValueError(
            f"{path}: {len(left)} tensor(s) would be dropped by the conversion, e.g. "
            f"{sorted(left)[:10]}; config.json says model_type "
            f"{hf_config.get('model_type')!r}: is the checkpoint another architecture?"
        )
