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


# ------------------------------------------------------------------------------ the import graph

# Modules under dfa/stages/ that are no command: shared helpers any stage may import. A module
# that is neither one of these nor (inside) a command of ``dfa.cli.COMMANDS`` fails
# ``test_every_stage_module_is_a_command_or_a_listed_helper``: say which it is.
STAGE_HELPERS = {
    "dfa.stages",                  # the package's own (empty) __init__
    "dfa.stages.common",           # device, seeds, dataset handles, progress bars, metrics files
    "dfa.stages.views",            # image views and the frozen extractor
    "dfa.stages.report",           # figures and per-class tables
    "dfa.stages.training",         # the training loop (train, search, ablation, bench) and load_trained
    "dfa.stages.seeds",            # seeds on a split: calibration loop, prediction, scoring
    "dfa.stages.segment",          # the decoder's multi-scale + flip inference (evaluate, ablation)
    "dfa.stages.search_space",     # search space files (search, bench's search_scaling)
    "dfa.stages.search_prereqs",   # what a study needs before it starts
    "dfa.stages.search_workers",   # worker processes on one study
    "dfa.stages.search_finalists", # re-scoring a study's finalists over seeds (search --rescore)
    "dfa.stages.ablation_timing",  # the ablation cells' phase times, from their runs, as a figure
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def resolve(name: str, known: set[str]) -> str | None:
    """The module of ``dfa`` that an imported dotted name is (or lies in): its longest known prefix."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def import_graph() -> dict[str, set[str]]:
    """Module → the modules of ``dfa`` it imports (anywhere in it, functions included).

    A package's ``__init__`` that Python runs before one of its submodules is not an edge:
    only what an import statement names."""
    mods = package_modules()
    known = set(mods)
    graph = {}
    for name, path in mods.items():
        targets = {resolve(m, known) for m in imported_modules(path)}
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (depth-first search, white/grey/black)."""
    colour = {n: 0 for n in graph}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        colour[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if colour.get(m, 2) == 1:
                return stack[stack.index(m):] + [m]
            if colour.get(m) == 0:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        colour[n] = 2
        return None

    for n in sorted(graph):
        if colour[n] == 0:
            found = visit(n)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "dfa.config" in graph["dfa.cli"]          # imported inside main()
    assert "dfa.tracking" in graph["dfa.stages.ablation"]


def test_dfa_has_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " → ".join(cycle)


def command_modules() -> set[str]:
    from dfa.cli import COMMANDS
    return {module for module, _ in COMMANDS.values()}


def command_of(module: str, commands: set[str]) -> str | None:
    """The command module (or package) ``module`` belongs to; None for a helper."""
    return next((c for c in commands if module == c or module.startswith(c + ".")), None)


def test_every_stage_module_is_a_command_or_a_listed_helper():
    commands = command_modules()
    stages = [m for m in package_modules() if m == "dfa.stages" or m.startswith("dfa.stages.")]
    unclassified = sorted(m for m in stages if m not in STAGE_HELPERS and command_of(m, commands) is None)
    assert unclassified == []
    assert not STAGE_HELPERS & commands
    assert set(STAGE_HELPERS) <= set(stages), sorted(set(STAGE_HELPERS) - set(stages))


def test_no_stage_command_imports_another_command():
    """A command module (or a module of a command package) imports helpers and its own
    package only; a helper imports no command at all."""
    commands = command_modules()
    graph = import_graph()
    crossing = {}
    for module, targets in graph.items():
        if not module.startswith("dfa.stages"):
            continue
        own = command_of(module, commands)
        bad = sorted(t for t in targets if t.startswith("dfa.stages.") and t not in STAGE_HELPERS
                     and command_of(t, commands) != own)
        if bad:
            crossing[module] = bad
    assert crossing == {}


BOTTOM = ("dfa.config", "dfa.io", "dfa.repo", "dfa.errors")


def test_the_bottom_floor_imports_nothing_above_it():
    """config/, io, repo and errors (README "Code layout") import only each other."""
    graph = import_graph()
    bottom = [m for m in graph if m.startswith(BOTTOM)]
    assert "dfa.config.loader" in bottom
    upward = {m: sorted(t for t in graph[m] if t != "dfa" and not t.startswith(BOTTOM)) for m in bottom}
    assert {m: v for m, v in upward.items() if v} == {}


def test_config_modules_stay_small():
    """One module per params.yaml section group: none grows back into a 700-line file."""
    sizes = {p.name: len(p.read_text().splitlines()) for p in (PACKAGE / "config").glob("*.py")}
    assert len(sizes) > 5 and not (PACKAGE / "config.py").exists()
    assert {k: v for k, v in sizes.items() if v > 250} == {}
