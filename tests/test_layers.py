"""The package's floors: ``cli`` → ``stages`` → everything else. Nothing below ``dfa/stages/``
imports a stage module or the CLI, not even inside a function."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dfa"
UPPER = ("dfa.stages", "dfa.cli", "dfa.__main__")


def imported_modules(path: Path) -> set[str]:
    """Dotted names of every module (and imported name) ``path`` imports; relative ones resolved."""
    package = ["dfa", *path.relative_to(PACKAGE).parts[:-1]]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            out.add(module)
            out.update(f"{module}.{a.name}" for a in node.names)
    return out


def test_no_module_below_the_stages_imports_upwards():
    lower = [p for p in PACKAGE.rglob("*.py")
             if "stages" not in p.relative_to(PACKAGE).parts and p.name not in ("cli.py", "__main__.py")]
    assert any(p.name == "tracking.py" for p in lower)
    upward = {str(p.relative_to(PACKAGE.parent)): sorted(m for m in imported_modules(p)
                                                         if m == "dfa.stages" or m.startswith(UPPER))
              for p in lower}
    assert {k: v for k, v in upward.items() if v} == {}


def test_tracking_reads_the_repository_from_below():
    mods = imported_modules(PACKAGE / "tracking.py")
    assert "dfa.repo.repo_root" in mods and "dfa.repo.git_commit" in mods
