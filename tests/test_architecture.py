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
    tree = ast.parse(path.read_text(), str(path))
    launched = {id(seq.elts[i + 1]) for seq in ast.walk(tree) if isinstance(seq, (ast.List, ast.Tuple))
                for i, elt in enumerate(seq.elts[:-1]) if isinstance(elt, ast.Constant) and elt.value == "-m"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known}
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and LAZY_IMPORT.match(node.value)
              and id(node) not in launched):  # [..., "-m", "autoembed.cli"] starts a process: no import
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
    direct = {name: imports_of(name, path, known) for name, path in files.items()}
    graph = {}
    for name, deps in direct.items():
        deps = set(deps)
        for dep in list(deps):  # importing a.b.c runs a/__init__ and a/b/__init__ too: an arrow if they import
            parts_ = dep.split(".")
            deps |= {p for p in (".".join(parts_[:i]) for i in range(1, len(parts_))) if direct.get(p)}
        graph[name] = deps - {name}
    return graph


def layers() -> dict[str, int]:
    """Part -> its floor, 0 at the top; parts named on one line of the layers block share a floor."""
    return {part.strip(): floor for floor, line in enumerate(doc_block("layers")) for part in line.split(",")}


def upward_arrows(graph: dict[str, set[str]], table: dict[str, list[str]], floors: dict[str, int]) -> list[str]:
    problems = []
    for module, deps in graph.items():
        source = part_of(module, table)
        for dep in deps:
            target = part_of(dep, table)
            if source and target and source != target and floors[target] <= floors[source]:
                problems.append(f"{module} imports {dep}: {source} (floor {floors[source]}) -> {target} "
                                f"(floor {floors[target]}) does not point down")
    return problems


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import graph's strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    import sys
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10000))
    try:  # restored after: a raised limit would leak into later tests (the loop's compile checks rely on it)
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


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


def test_every_arrow_points_down_a_floor():
    table, floors = parts(), layers()
    assert set(floors) == set(table), "the layers block must name every part once"
    problems = upward_arrows(module_graph(), table, floors)
    problems += [f"allowed arrow {s} -> {t} points up or sideways" for s, t in arrows("arrows")
                 if s != t and floors[t] <= floors[s]]
    assert not problems, "\n".join(problems)


def test_no_import_circle():
    found = circles(module_graph())
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_every_allowed_arrow_is_used():
    """The allowed list holds only arrows the code uses, so it reads as the map it is."""
    table = parts()
    used = {(part_of(m, table), part_of(d, table)) for m, deps in module_graph().items() for d in deps}
    unused = sorted(f"{s} -> {t}" for s, t in arrows("arrows") if s != t and (s, t) not in used)
    assert not unused, "ARCHITECTURE.md allows arrows the code never uses: " + ", ".join(unused)


def test_the_checkers_catch_a_circle_and_an_arrow_up():
    graph = {**module_graph()}
    graph["autoembed.task.spec"] = graph.get("autoembed.task.spec", set()) | {"autoembed.trial.run"}
    assert any("autoembed.task.spec" in c for c in circles(graph))
    assert any("autoembed.task.spec imports autoembed.trial.run" in p for p in upward_arrows(graph, parts(), layers()))


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
    ("autoembed.loop.meta.propose", "autoembed.trial.run", "the arrow meta -> trial is not in"),
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


MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_PARAMETERS = 600, 80, 8
ONE_FILE_BY_DESIGN = {"harnesses.recipe", "harnesses.baseline"}  # the meta-agent edits one whole file: no line cap


def oversized() -> list[str]:
    """Modules over 600 lines, functions over 80 lines or with more than 8 parameters (self/cls not counted)."""
    problems = []
    for name, path in module_files().items():
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES and name not in ONE_FILE_BY_DESIGN:
            problems.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text, str(path))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                problems.append(f"{where}: {length} lines (at most {MAX_FUNCTION_LINES})")
            a = node.args
            params = [*a.posonlyargs, *a.args, *a.kwonlyargs, *([a.vararg] if a.vararg else []), *([a.kwarg] if a.kwarg else [])]
            count = len(params) - (1 if a.args and a.args[0].arg in ("self", "cls") else 0)
            if count > MAX_PARAMETERS:
                problems.append(f"{where}: {count} parameters (at most {MAX_PARAMETERS}; group them in a dataclass)")
    return problems


def test_modules_and_functions_stay_small():
    problems = oversized()
    assert not problems, "\n".join(problems)
