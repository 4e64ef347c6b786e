"""Imports flow one way (DESIGN.md): a layer imports only from the layers above it."""

import ast
import subprocess
import sys
from pathlib import Path

import rwkvtune

PACKAGE = Path(rwkvtune.__file__).parent

# Lower number = higher layer; a module may import rwkvtune subpackages of a lower-or-equal number
# only (equal: within the same layer). The package root (rwkvtune/__init__.py) is the public facade.
LAYERS = {
    "version": 0, "config": 1, "tokenizer": 1, "ops": 2, "model": 3, "hub": 4, "peft": 5,
    "data": 5, "generation": 5, "grpo": 6, "dpo": 6, "engine": 7, "training": 8, "cli": 9,
}

# Deliberate upward imports, by module path and imported subpackage: ``RWKV7.generate`` and
# ``StateTunedModel.generate`` import ``rwkvtune.generation`` inside the method as a convenience.
ALLOWED_UPWARD = {("model/rwkv7.py", "generation"), ("peft/state_tuning.py", "generation")}


def rwkvtune_imports(path: Path) -> set[str]:
    """The rwkvtune subpackages a module imports (``from rwkvtune import x`` counts as ``x``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: use absolute imports"
            if node.module == "rwkvtune":
                names.update(f"rwkvtune.{alias.name}" for alias in node.names)
            elif node.module:
                names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n.split(".")[1] for n in names if n.startswith("rwkvtune.")}


def test_every_subpackage_has_a_layer():
    found = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    found |= {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert found <= set(LAYERS), found - set(LAYERS)


def test_imports_flow_one_way():
    violations = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if len(rel.parts) == 1:
            continue  # the facade and version module
        own = LAYERS[rel.parts[0]]
        for imported in rwkvtune_imports(path):
            if (rel.as_posix(), imported) in ALLOWED_UPWARD:
                continue
            if LAYERS[imported] > own or (LAYERS[imported] == own and imported != rel.parts[0]
                                          and own not in (1,)):
                violations.append(f"{rel} imports rwkvtune.{imported}")
    assert not violations, violations


def test_tokenizer_and_config_do_not_need_torch():
    code = "import sys, rwkvtune.config, rwkvtune.tokenizer; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
