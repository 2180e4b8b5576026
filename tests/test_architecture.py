"""ARCHITECTURE.md's arrows against the code: every import (at the top, inside functions, and the 'module:Class'
strings the registries import lazily) between two parts must be an allowed arrow; no forbidden arrow may exist,
directly or through a chain; and nothing that runs inside the sandbox reaches autoembed.sealed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "ARCHITECTURE.md"
LAZY_IMPORT = re.compile(r"^(autoembed(?:\.\w+)+)(?::\w+)?$")  # "autoembed.agents.cli.claude:ClaudeCodeAgent"
SANDBOX_ENTRIES = ("autoembed.task", "autoembed.agents.harness_runtime", "harnesses")


def doc_block(name: str) -> list[str]:
    match = re.search(rf"```{name}\n(.*?)```", DOC.read_text(), re.S)
    assert match, f"ARCHITECTURE.md has no ```{name} block"
    return [line.split("#")[0].strip() for line in match.group(1).splitlines() if line.split("#")[0].strip()]


def parts() -> dict[str, list[str]]:
    return {part.strip(): [m.strip() for m in mods.split(",")] for part, mods in (l.split(":", 1) for l in doc_block("parts"))}


def arrows(block: str) -> set[tuple[str, str]]:
    out = set()
    for line in doc_block(block):
        source, targets = (s.strip() for s in line.split("->"))
        out |= {(source, t.strip()) for t in targets.split(",")}
    return out


def module_files() -> dict[str, Path]:
    files = {}
    for path in [*ROOT.joinpath("autoembed").rglob("*.py"), *ROOT.joinpath("harnesses").glob("*.py")]:
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        files[name] = path
    return files


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules this file imports, anywhere in it, resolved to modules of this repository (others dropped)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and LAZY_IMPORT.match(node.value):
            found.add(LAZY_IMPORT.match(node.value).group(1))
    resolved = set()
    for module in found:
        while module and module not in known:  # `import autoembed.x.y` of a name inside a module: its module
            module = module.rpartition(".")[0]
        if module:
            resolved.add(module)
    return resolved - {name}


def part_of(module: str, table: dict[str, list[str]]) -> str | None:
    best = None
    for part, entries in table.items():
        for entry in entries:
            # the bare root package matches itself only; any other entry also covers what is below it
            if module == entry or (entry != "autoembed" and module.startswith(entry + ".")):
                if best is None or len(entry) > len(best[1]):
                    best = (part, entry)
    return best[0] if best else None


def module_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    graph = {}
    for name, path in files.items():
        deps = imports_of(name, path, known)
        for dep in list(deps):  # importing a.b.c runs a/__init__ and a/b/__init__ too
            parts_ = dep.split(".")
            deps |= {".".join(parts_[:i]) for i in range(1, len(parts_)) if ".".join(parts_[:i]) in known}
        graph[name] = deps
    return graph


def violations(graph: dict[str, set[str]], table: dict[str, list[str]], allowed: set, never: set) -> list[str]:
    problems = []
    part_edges: dict[str, set[str]] = {}
    for module, deps in graph.items():
        source = part_of(module, table)
        if source is None:
            problems.append(f"{module} belongs to no part: add it to ARCHITECTURE.md's parts block")
            continue
        for dep in deps:
            target = part_of(dep, table)
            if target is None or target == source:
                continue
            part_edges.setdefault(source, set()).add(target)
            if (source, target) not in allowed:
                problems.append(f"{module} imports {dep}: the arrow {source} -> {target} is not in ARCHITECTURE.md")
    for source, target in never:
        reach, todo = set(), [source]
        while todo:
            for nxt in part_edges.get(todo.pop(), ()):
                if nxt not in reach:
                    reach.add(nxt)
                    todo.append(nxt)
        if target in reach:
            problems.append(f"forbidden: {source} reaches {target} (directly or through a chain of imports)")
    return problems


def closure(graph: dict[str, set[str]], start: set[str]) -> set[str]:
    seen, todo = set(start), list(start)
    while todo:
        for dep in graph.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_every_import_follows_the_documented_arrows():
    problems = violations(module_graph(), parts(), arrows("arrows"), arrows("never"))
    assert not problems, "\n".join(problems)


def test_the_forbidden_arrows_are_not_also_allowed():
    assert not arrows("arrows") & arrows("never")


def test_nothing_that_runs_in_the_sandbox_reaches_sealed():
    graph = module_graph()
    entries = {m for m in graph if any(m == e or m.startswith(e + ".") for e in SANDBOX_ENTRIES)}
    assert "autoembed.agents.harness_runtime" in entries and "harnesses.baseline" in entries
    reached = closure(graph, entries)
    assert "autoembed.llm.registry" in reached  # the harness process's model calls: the closure is real
    assert not {m for m in reached if m == "autoembed.sealed" or m.startswith("autoembed.sealed.")}


@pytest.mark.parametrize("source, dep, expected", [
    ("autoembed.task.x", "autoembed.sealed.scorer", "the arrow task -> sealed is not in"),
    ("autoembed.meta.propose", "autoembed.run", "the arrow meta -> run is not in"),
    ("autoembed.task.x", "autoembed.agents.recipe", "forbidden: task reaches sealed"),
    ("autoembed.newpart", "autoembed.task", "belongs to no part"),
])
def test_the_checker_catches_a_bad_arrow(source, dep, expected):
    """A planted import must be caught, so a checker that sees nothing cannot pass."""
    graph = {**module_graph(), source: {dep}}
    if dep == "autoembed.agents.recipe":  # a chain: task -> agents (planted) -> ... ; plus agents -> sealed planted
        graph["autoembed.agents.recipe"] = graph.get("autoembed.agents.recipe", set()) | {"autoembed.sealed.scorer"}
    problems = violations(graph, parts(), arrows("arrows"), arrows("never"))
    assert any(expected in p for p in problems), problems


def test_imports_inside_functions_and_lazy_strings_are_seen(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from autoembed.sealed import scorer\n"
                    "AGENTS = {'x': 'autoembed.agents.recipe:RecipeAgent'}\n")
    known = set(module_files())
    found = imports_of("autoembed.task.m", path, known)
    assert {"autoembed.sealed.scorer", "autoembed.agents.recipe"} <= found
