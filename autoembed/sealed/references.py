"""Does final_model name anything outside itself? Checked before sentence-transformers reads any of it.

The loaders follow names they find in a saved model: modules.json's "path" of each module (joined to the model
folder), sentence_bert_config.json's tokenizer_name_or_path (a host folder or a hub id, taken as given), PEFT's
base_model_name_or_path, from_pretrained kwargs such as cache_dir or offload_folder, a shard index's file names,
config.json's auto_map (code to import). A submission must hold everything it uses, so:

- every module path and shard file name is relative, has no "..", and lies beneath final_model with no link on
  the way;
- no config file names a path, a hub id or code: a key that reads as a path (…_path, …_name_or_path, …_file,
  …_dir, …_folder, repo_id, …) holds nothing, auto_map is empty, trust_remote_code is not set, and a …_class
  or …_function value is a bare name or one of sentence-transformers', transformers' or torch.nn's own;
- no link in final_model leaves it (a link to elsewhere in the workdir points elsewhere once final_model is
  copied out).

A relative value is refused as well as an absolute one: the loaders resolve it against the scorer's working
directory, or as a hub id, never against final_model. Two keys are records, not references, and are allowed:
config.json's _name_or_path and tokenizer_config.json's name_or_path, which transformers overwrites with the
folder it loads from. A value the base model's own file holds under the same key is allowed too (the harness
loads the base the same way).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

PATH_KEY = re.compile(r"(?:^|_)(?:path|paths|file|files|filename|dir|directory|folder|name_or_path|repo|repo_id|"
                      r"model_id|url)$", re.I)
CLASS_KEY = re.compile(r"(?:^|_)(?:class|class_ref|function|fn)$", re.I)  # a class or function, by import path
OWN_CODE = ("sentence_transformers.", "transformers.", "torch.nn.")  # where a dotted name may live (Dense: torch.nn)
RECORDS = {("config.json", "_name_or_path"), ("tokenizer_config.json", "name_or_path")}  # overwritten on load
SKIPPED = ("tokenizer.json",)  # the tokenizers library's model (vocabulary, merges): data that names no file
MAX_CONFIG_BYTES = 16 * 2**20
MAX_PROBLEMS = 20


def outside_references(final: Path, base: Path | None = None) -> list[str]:
    """What in final names something outside it, one line each naming the file, the key and the fix; [] when
    the folder is self-contained. base: a model folder whose own references are trusted (the base model)."""
    final = Path(final)
    problems = _links_out(final) + _module_paths(final) + _config_references(final)
    if base is not None and problems:
        trusted = set(_config_references(Path(base)))
        problems = [p for p in problems if p not in trusted]
    return problems[:MAX_PROBLEMS]


def _links_out(final: Path) -> list[str]:
    real = os.path.realpath(final)
    out = []
    for root, dirs, files in os.walk(final):
        for name in dirs + files:
            path = os.path.join(root, name)
            if os.path.islink(path) and not _beneath(os.path.realpath(path), real):
                out.append(f"{os.path.relpath(path, final)} is a link to {os.readlink(path)!r}, outside final_model: "
                           "copy the file in instead")
    return out


def _module_paths(final: Path) -> list[str]:
    path = final / "modules.json"
    if not path.is_file() or path.is_symlink():
        return []
    try:
        modules = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (ValueError, RecursionError):
        return []  # not a list of modules: check_static reports it, and the loader cannot use it
    if not isinstance(modules, list):
        return []
    out = []
    for module in modules:
        if isinstance(module, dict) and "path" in module:
            problem = relative_problem(final, module["path"])
            if problem:
                out.append(f"modules.json: module {module.get('name')!r} has path {module['path']!r}, which {problem}; "
                           "save with model.save('final_model') so each module sits in a subfolder of final_model")
    return out


def relative_problem(final: Path, value) -> str | None:
    """Why value, a path the loader joins to final, may not lie beneath final (None when it does)."""
    if not isinstance(value, str):
        return "is not a string"
    if "\0" in value:
        return "holds a NUL byte"
    if PurePosixPath(value).is_absolute() or PureWindowsPath(value).anchor:
        return "is absolute"
    parts = PureWindowsPath(value).parts  # splits at "/" and "\\" both
    if ".." in parts:
        return "climbs out with '..'"
    current = final
    for part in parts:
        current = current / part
        if current.is_symlink():
            return f"passes through the link {current.relative_to(final)}"
        if not current.exists():
            break
    if not _beneath(os.path.realpath(current), os.path.realpath(final)):
        return "resolves outside final_model"
    return None


def _config_references(final: Path) -> list[str]:
    out = []
    for root, dirs, files in os.walk(final):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if not name.endswith(".json") or name in SKIPPED or path.is_symlink() or not path.is_file():
                continue
            rel = path.relative_to(final).as_posix()
            if path.stat().st_size > MAX_CONFIG_BYTES:
                out.append(f"{rel} is over {MAX_CONFIG_BYTES // 2**20} MiB, too large to check for references: "
                           "keep only the model's own config files in final_model")
                continue
            try:
                body = json.loads(path.read_text(encoding="utf-8", errors="replace"))
            except ValueError:
                continue  # the loader fails on it (a broken submission), or never reads it
            except RecursionError:
                out.append(f"{rel} is nested too deep to check for references: save plain config files")
                continue
            out += _json_references(final, rel, body)
    return out


def _json_references(final: Path, rel: str, body) -> list[str]:
    name = PurePosixPath(rel).name
    out = []
    stack = [("", body)]
    while stack:
        where, node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            at = f"{where}.{key}" if where else str(key)
            if isinstance(value, (dict, list)):
                stack.append((at, value))
            if not isinstance(key, str):
                continue
            problem = _key_problem(final, name, key, value)
            if problem:
                out.append(f"{rel}: {at} = {_short(value)} {problem}")
    return sorted(out)


def _key_problem(final: Path, name: str, key: str, value) -> str | None:
    if name == "modules.json" and key == "path":
        return None  # checked as a module path
    if key == "weight_map" and name.endswith(".index.json") and isinstance(value, dict):
        bad = sorted({str(v) for v in value.values() if relative_problem(final, v)})
        return f"names shard files outside final_model ({bad[:3]}): keep every shard in final_model" if bad else None
    if key == "auto_map" and value:
        return "names code for transformers to import: delete auto_map (remote code is never run)"
    if key == "trust_remote_code" and value:
        return "asks for remote code: delete the key (remote code is never run)"
    if CLASS_KEY.search(key) and isinstance(value, str) and "." in value and not value.startswith(OWN_CODE):
        return "names code outside sentence-transformers and transformers: keep the base model's classes"
    if PATH_KEY.search(key) and (name, key) not in RECORDS and _names_something(value):
        return ("names a path or a hub id the loader would read from outside final_model: delete the key so "
                "the files inside final_model are used")
    return None


def _names_something(value) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, list):
        return any(_names_something(v) for v in value)
    if isinstance(value, dict):
        return any(_names_something(v) for v in value.values())
    return False


def _beneath(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 120 else text[:117] + "..."
