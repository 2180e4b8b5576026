"""Python code search: first docstring sentence -> the function's source without its docstring.

Three origins, one per split: the stdlib (dev), installed site-packages (pool) and pure-Python
PyPI wheels that are installed nowhere the agent runs (held-out; downloaded with
`pip download --no-deps` at pinned versions and unzipped into a temp dir, never installed).
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

from .common import Item, first_sentence, is_trivial_query, one_line, sha256_file, truncate

# held-out wheels: pure Python, not installed here nor in the GPU image, nor dependencies of autoembed
HELDOUT_WHEELS = {
    "django": "5.2.19",
    "sqlalchemy": "2.1.9",
    "twisted": "26.10.0",
    "sphinx": "9.0.4",
    "nltk": "3.10.4",
    "paramiko": "5.1.0",
    "pylint": "4.1.4",
    "astroid": "4.3.4",
}
# import names of the held-out distributions; none of them may feed the pool or dev
HELDOUT_IMPORT_NAMES = {"django", "sqlalchemy", "twisted", "sphinx", "nltk", "paramiko", "pylint", "astroid"}

SKIP_DIRS = {"test", "tests", "testing", "idle_test", "__pycache__", "site-packages", "dist-packages",
             "turtledemo", "ensurepip", "pydoc_data", "_pytest_tests", "benchmarks", "examples"}
# site-packages that are ours, are tools of this machine rather than libraries, or would flood the pool
SITE_SKIP = {"autoembed", "pip", "setuptools", "_distutils_hack", "pkg_resources", "wheel", "tests",
             "test", "examples", "docs"}
MIN_QUERY_WORDS = 4
MIN_BODY_LINES = 3  # the def line plus at least two lines of body


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def site_packages_dir() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def body_fingerprint(node: ast.AST) -> str:
    """Formatting- and comment-blind identity of a function, docstring removed: catches vendored
    copies (pip/_vendor, setuptools/_distutils) of the same code."""
    clone = ast.parse(ast.unparse(node)).body[0]
    if _docstring_node(clone) is not None:
        clone.body = clone.body[1:]
    return hashlib.sha1(ast.dump(clone, annotate_fields=False).encode()).hexdigest()


def _docstring_node(node) -> ast.Expr | None:
    first = node.body[0] if node.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first
    return None


def functions_of_file(path: Path, group: str, key_prefix: str) -> list[tuple[Item, str]]:
    """Items (with their body fingerprints) for every qualifying function or method in one file."""
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (SyntaxError, UnicodeDecodeError, ValueError, RecursionError):
        return []
    lines = source.splitlines()
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc_node = _docstring_node(node)
        if doc_node is None or doc_node.lineno == node.lineno:
            continue
        docstring = inspect.cleandoc(doc_node.value.value)
        query = first_sentence(docstring.split("\n\n")[0])
        if len(query.split()) < MIN_QUERY_WORDS or len(query) > 300:
            continue
        start = min([node.lineno] + [d.lineno for d in node.decorator_list])
        after = lines[doc_node.end_lineno: node.end_lineno]
        if after and not after[0].strip():
            after = after[1:]  # the blank line that used to follow the docstring
        kept = lines[start - 1: doc_node.lineno - 1] + after
        code = textwrap.dedent("\n".join(kept)).strip("\n")
        if sum(1 for line in code.splitlines() if line.strip()) < MIN_BODY_LINES:
            continue
        if is_trivial_query(query, code, min_words=MIN_QUERY_WORDS):
            continue
        try:
            fingerprint = body_fingerprint(node)
        except (SyntaxError, RecursionError, ValueError):
            continue
        item = Item(domain="pycode", group=group, key=f"{key_prefix}:{node.lineno}:{node.name}",
                    query=one_line(query), doc=truncate(code))
        out.append((item, fingerprint))
    return out


def _walk_py(root: Path, skip_dirs: set[str]):
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in skip_dirs or part.startswith("test_") for part in rel.parts[:-1]):
            continue
        if rel.name.startswith("test_") or rel.name == "conftest.py":
            continue
        yield path, rel


def stdlib_items() -> list[tuple[Item, str]]:
    root = stdlib_dir()
    out = []
    for path, rel in _walk_py(root, SKIP_DIRS | {"lib2to3", "idlelib"}):
        top = rel.parts[0].removesuffix(".py")
        out.extend(functions_of_file(path, f"stdlib:{top}", f"stdlib/{rel.as_posix()}"))
    return out


def site_items(log=print) -> tuple[list[tuple[Item, str]], dict[str, str]]:
    """Functions of the installed site-packages (pool), and the versions read."""
    from importlib import metadata

    root = site_packages_dir()
    tops: dict[str, str] = {}  # import name -> "dist==version"
    for dist in metadata.distributions():
        names = (dist.read_text("top_level.txt") or "").split()
        if not names and dist.files:
            names = sorted({f.parts[0].removesuffix(".py") for f in dist.files
                            if f.parts and f.suffix in (".py", "") and not f.parts[0].endswith((".dist-info", ".data"))})
        for name in names:
            tops.setdefault(name, f"{dist.metadata['Name']}=={dist.version}")
    out = []
    versions = {}
    for entry in sorted(root.iterdir()):
        name = entry.name.removesuffix(".py")
        if name in SITE_SKIP or name in HELDOUT_IMPORT_NAMES or name.startswith(("_", ".")) or name.endswith(
            (".dist-info", ".egg-info", ".pth", ".data", ".libs")
        ):
            continue
        if not (entry.is_dir() or entry.suffix == ".py"):
            continue
        versions[name] = tops.get(name, "unknown")
        files = [(entry, Path(entry.name))] if entry.is_file() else [
            (p, Path(name) / r) for p, r in _walk_py(entry, SKIP_DIRS)]
        count = 0
        for path, rel in files:
            found = functions_of_file(path, f"site:{name}", f"site/{rel.as_posix()}")
            out.extend(found)
            count += len(found)
        if count:
            log(f"  site-packages {name}: {count} functions")
    return out, versions


def download_wheels(dest: Path) -> dict[str, dict[str, str]]:
    """`pip download --no-deps` each pinned held-out wheel (pure Python: platform 'any')."""
    dest.mkdir(parents=True, exist_ok=True)
    lock = {}
    for dist, version in HELDOUT_WHEELS.items():
        wheels = sorted(dest.glob(f"{dist}-{version}-*.whl"))
        if not wheels:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                 "--platform", "any", "--python-version", "3.11", "--implementation", "py",
                 "-q", "-d", str(dest), f"{dist}=={version}"],
                check=True,
            )
            wheels = sorted(dest.glob(f"{dist}-{version}-*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download {dist}=={version} left no wheel in {dest}")
        lock[dist] = {"version": version, "wheel": wheels[0].name, "sha256": sha256_file(wheels[0])}
    return lock


def heldout_items(wheel_dir: Path, extract_dir: Path) -> list[tuple[Item, str]]:
    out = []
    for dist in HELDOUT_WHEELS:
        wheel = sorted(wheel_dir.glob(f"{dist}-{HELDOUT_WHEELS[dist]}-*.whl"))[0]
        target = extract_dir / dist
        if not target.exists():
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(target)
        for path, rel in _walk_py(target, SKIP_DIRS):
            if rel.parts[0].endswith((".dist-info", ".data")):
                continue
            out.extend(functions_of_file(path, f"pypi:{dist}", f"pypi/{rel.as_posix()}"))
    return out
