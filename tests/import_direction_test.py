"""The package layers import one way (docs/internals.md), and only entry points import gin.

Every `import` and `from ... import` of every module under flan_jax/ is read with ast (function
bodies included: a lazy import is still a dependency), so nothing is imported to check.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "flan_jax"

# Lower rank = lower layer. A module may import its own package and any lower rank.
RANKS = {
    "flan_jax": 0,  # the package docstring
    "flan_jax.types": 0,
    "flan_jax.partitioning": 0,
    "flan_jax.metrics": 0,  # metric functions and postprocessors, attached to tasks by data
    "flan_jax.specs": 0,
    "flan_jax.model": 1,
    "flan_jax.data": 1,
    "flan_jax.checkpoints": 1,
    "flan_jax.convert": 2,  # Hugging Face / T5X <-> flan_jax: model configs + checkpoints
    "flan_jax.training": 3,
    "flan_jax.evaluation": 4,  # writes eval records through training's metrics log
    "flan_jax.registry": 5,  # registers the data layer's specs and evaluation's benchmarks
    "flan_jax.cli": 6,
}
GIN_ALLOWED = "flan_jax.cli"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    """The layer unit a module belongs to: its top package under flan_jax, or itself."""
    parts = module.split(".")
    return ".".join(parts[:2])


def _imports(path: pathlib.Path, module: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".")
                is_init = path.name == "__init__.py"
                package = package if is_init else package[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            found.append((node.lineno, base))
            # `from flan_jax import training` names a package too
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def _modules():
    return sorted(
        (p, _module_name(p)) for p in ROOT.rglob("*.py") if "specs" not in p.relative_to(ROOT).parts
    )


def test_every_module_has_a_layer():
    missing = sorted({_unit(m) for _, m in _modules()} - set(RANKS))
    assert not missing, f"modules outside any layer: {missing}; add them to RANKS"


def _violations():
    up, gin = [], []
    for path, module in _modules():
        unit = _unit(module)
        for line, name in _imports(path, module):
            where = f"{path.relative_to(ROOT.parent)}:{line}"
            if name == "gin" or name.startswith("gin."):
                if unit != GIN_ALLOWED:
                    gin.append(f"{where} imports {name}")
                continue
            if not name.startswith("flan_jax.") or name.split(".")[1] not in _packages():
                continue
            target = _unit(name)
            if target != unit and RANKS[target] >= RANKS[unit]:
                up.append(f"{where}: {unit} (layer {RANKS[unit]}) imports {name} "
                          f"(layer {RANKS[target]})")  # fmt: skip
    return up, gin


def _packages() -> set[str]:
    return {u.split(".")[1] for u in RANKS if "." in u}


def test_imports_run_down_the_layers():
    up, _ = _violations()
    assert not up, "imports that run up (or across) the layers:\n" + "\n".join(up)


def test_only_entry_points_import_gin():
    _, gin = _violations()
    assert not gin, "library code importing gin (only flan_jax.cli may):\n" + "\n".join(gin)


@pytest.mark.parametrize(
    "source, bad",
    [
        ("from flan_jax.training import train\n", "flan_jax.training"),
        ("import gin\n", "gin"),
    ],
)
def test_the_checks_see_a_bad_import(tmp_path, monkeypatch, source, bad):
    """A model module importing training, or gin, is reported (the checks are not vacuous)."""
    fake_root = tmp_path / "flan_jax"
    (fake_root / "model").mkdir(parents=True)
    (fake_root / "model" / "bad.py").write_text(source)
    monkeypatch.setitem(globals(), "ROOT", fake_root)
    up, gin = _violations()
    assert any(bad in v for v in up + gin), (up, gin)
