"""Imports point down: every ddpmkit module imports only from its own floor or lower ones.

Read from the source with ``ast`` (imports inside functions count too), so a new upward import
fails here instead of needing a lazy-import trick to avoid a cycle."""

import ast
from pathlib import Path

import ddpmkit

PKG = Path(ddpmkit.__file__).parent

# floor of each top-level part of the package; a module may import from floors <= its own
FLOORS = {
    "errors": 0, "argtypes": 0, "cache": 0,
    "config": 1, "checkpoint": 1, "diffusion": 1, "data": 1,
    "networks": 2, "viz": 2, "testing": 2,
    "samplers": 3, "diffusers_pipeline": 3,
    "runs": 4, "validate": 4,
    "training": 5, "evaluation": 5, "pipeline": 5, "coding": 5,
    "demo": 6, "cli": 6, "evaluation.cli": 6, "coding.cli": 6, "__main__": 6, "__init__": 6,
}


def part_of(dotted: str) -> str:
    """'evaluation.cli' / 'coding.cli' for those CLIs, else the first component ('samplers.ddim' -> 'samplers')."""
    for cli in ("evaluation.cli", "coding.cli"):
        if dotted.startswith(cli):
            return cli
    return dotted.split(".")[0]


def imports_of(path: Path) -> set[str]:
    """ddpmkit modules imported by ``path``, as dotted names relative to the package."""
    rel = path.relative_to(PKG).with_suffix("").parts
    here = list(rel[:-1])  # the module's package
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [f"{target}.{a.name}".strip(".") for a in node.names]
            elif node.module and node.module.startswith("ddpmkit."):
                names = [node.module[len("ddpmkit."):]]
            else:
                continue
            found.update(n for n in names if n)
        elif isinstance(node, ast.Import):
            found.update(a.name[len("ddpmkit."):] for a in node.names if a.name.startswith("ddpmkit."))
    return found


def test_every_import_points_down():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        me = part_of(".".join(path.relative_to(PKG).with_suffix("").parts))
        assert me in FLOORS, f"{path}: add its part {me!r} to FLOORS"
        for target in imports_of(path):
            other = part_of(target)
            if other in FLOORS and FLOORS[other] > FLOORS[me]:
                bad.append(f"{path.relative_to(PKG)} (floor {FLOORS[me]}) imports {target} (floor {FLOORS[other]})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_parameterization_is_pure_and_used_by_the_process():
    param = PKG / "diffusion" / "parameterization.py"
    assert imports_of(param) == set(), "parameterization must be tensors in, tensors out (no ddpmkit imports)"
    assert "diffusion.parameterization" in imports_of(PKG / "diffusion" / "process.py")


def test_the_finder_sees_relative_imports():
    # the checker can only fail if it finds imports: these are known to be there
    samplers_init = imports_of(PKG / "samplers" / "__init__.py")
    assert {"samplers.common", "samplers.ddim"} <= samplers_init
    assert "runs" in imports_of(PKG / "training" / "trainer.py")
    assert "checkpoint" in imports_of(PKG / "runs.py")
