"""A gin-free reader of gin/models/*.gin, so the benchmarks run where gin-config is absent.

Accelerator machines may have jax, flax and optax but neither TensorFlow, seqio nor gin. The
model gin files use a small subset of gin: `include`, macros (`NAME = value`), `@x.Y()`
references, `scope.Class.param = value` and `scope.Class:` blocks of `param = value`. This
reader handles exactly that subset (tests/tf_free_test.py checks it builds the same models
as gin for every shipped model file) and raises ValueError on anything else.
"""

from __future__ import annotations

import ast
import pathlib
import re

from flan_jax.model import models, network

CLASSES = {
    "models.EncoderDecoderModel": models.EncoderDecoderModel,
    "models.DecoderOnlyModel": models.DecoderOnlyModel,
    "models.LossConfig": models.LossConfig,
    "network.TransformerConfig": network.TransformerConfig,
}
_REF = re.compile(r"^@([\w.]+)\(\)$")


def _lines(path: pathlib.Path, root: pathlib.Path):
    """Logical lines of a file with includes expanded and block parameters qualified."""
    block = None
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line or line.startswith("from "):
            continue
        if line.startswith("include "):
            yield from _lines(root / ast.literal_eval(line.split(None, 1)[1]), root)
        elif line.endswith(":") and not line.startswith(" "):
            block = line[:-1].strip()
        elif line.startswith(" "):
            if block is None:
                raise ValueError(f"{path}: indented line outside a block: {raw!r}")
            yield f"{block}.{line.strip()}"
        else:
            block = None
            yield line


def read(path: str | pathlib.Path, root: str | pathlib.Path, bindings=()) -> object:
    """The MODEL of a model gin file (`root`: the gin folder includes are relative to)."""
    macros, params = {}, {}
    for line in [*_lines(pathlib.Path(path), pathlib.Path(root)), *bindings]:
        name, value = (part.strip() for part in line.split("=", 1))
        if "." in name:
            scope, param = name.rsplit(".", 1)
            params.setdefault(scope, {})[param] = value
        else:
            macros[name] = value

    def value_of(text: str):
        if text.startswith("%"):
            return value_of(macros[text[1:]])
        ref = _REF.match(text)
        if ref:
            return build(ref.group(1))
        return ast.literal_eval(text)

    def build(scope: str):
        if scope not in CLASSES:
            raise ValueError(f"{path}: {scope} is not one of {sorted(CLASSES)}")
        kwargs = {k: value_of(v) for k, v in params.get(scope, {}).items()}
        return CLASSES[scope](**kwargs)

    return value_of(macros["MODEL"])
