"""Which code made a run: the import graph of the package, read from source, and a per-file fingerprint of the code
one stage runs (its entry module and every specscale module it imports, directly or not).

The fingerprint is {file path relative to the code root: sha256 of the file's bytes}. Recorded in each run's
provenance.json, it lets the launcher, `specscale status` and `plan --why` name the files that changed since a
cached run was made, and the fit flag a β whose widths were made by different code. tests/test_layering.py checks
the package's structure on the same graph.

Core never imports the stage scripts: the caller passes the folder of `stages` (and the entry module's
name), this module only reads files.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

# a run made before fingerprints were recorded: the one "file" its difference can name
NOT_RECORDED = "(code not recorded)"
# Fingerprints of code that was moved without a change of behaviour (issue 19's layout move): {sha256 of a recorded
# fingerprint, canonical JSON: the fingerprint the same code has after the move}. Package data; see as_moved.
MOVED_CODE_FILE = Path(__file__).resolve().parents[1] / "data" / "moved_code.json"


def package_dirs(stages_dir: Path | str | None = None) -> dict[str, Path]:
    """Package name → source folder: the installed `specscale` (core/specscale, sub-packages included) and, only when
    the caller (above the library) names it, the stage scripts' package `stages`."""
    dirs = {"specscale": Path(__file__).resolve().parents[1]}
    if stages_dir is not None:
        dirs["stages"] = Path(stages_dir).resolve()
    return dirs


def _is_type_checking(test: ast.expr) -> bool:
    """`if TYPE_CHECKING:` or `if typing.TYPE_CHECKING:`: imports under it never run."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.AST) -> Iterable[ast.Import | ast.ImportFrom]:
    """Every import statement of a module that can run: module level or inside functions (a lazy import is still
    code the module runs), but not under `if TYPE_CHECKING:` (type-only; its `else:` branch does run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _holds_code(tree: ast.Module) -> bool:
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in tree.body)


def has_code(path: Path) -> bool:
    """False for a file holding at most a docstring (the package __init__ files, which re-export nothing)."""
    return _holds_code(ast.parse(path.read_bytes(), str(path)))


class ModuleGraph:
    """Every module of the given packages (every *.py under each package folder, sub-packages included) and the
    modules of those packages each one imports when it runs (_runtime_imports)."""

    def __init__(self, dirs: Mapping[str, Path | str]) -> None:
        self.dirs = {name: Path(folder) for name, folder in dirs.items()}
        files: dict[str, Path] = {}
        for package, folder in self.dirs.items():
            for path in sorted(folder.rglob("*.py")):
                parts = path.relative_to(folder).with_suffix("").parts
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                files[".".join((package, *parts))] = path
        self.files = files
        self._parsed: dict[str, set[str]] = {}  # parsed on demand: a fingerprint needs only one closure
        self._holds_code: dict[str, bool] = {}  # per parsed module: anything beyond a docstring (has_code)

    @cached_property
    def imports(self) -> dict[str, set[str]]:
        """Module → the specscale modules it imports, for every module of the packages."""
        return {name: self.imports_of(name) for name in self.files}

    @cached_property
    def root(self) -> Path:
        """The folder fingerprints are relative to: the deepest folder holding every package (the repository for
        an editable install, so paths read core/specscale/train/train.py, stages/train.py)."""
        return Path(os.path.commonpath([str(p) for p in self.dirs.values()]))

    def imports_of(self, name: str) -> set[str]:
        """The modules of the packages that `name` names in an import statement (`import a.b`, `from a.b import c`
        gives a.b and a.b.c if that is a module; relative imports resolved)."""
        if name in self._parsed:
            return self._parsed[name]
        path = self.files[name]
        package = name if path.stem == "__init__" else name.rpartition(".")[0]
        found: set[str] = set()
        tree = ast.parse(path.read_bytes(), str(path))
        self._holds_code[name] = _holds_code(tree)
        for node in _runtime_imports(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from .x import y
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            found |= {t for t in targets if t in self.files and t != name}
        self._parsed[name] = found
        return found

    def closure(self, start: str) -> set[str]:
        """Every module `start` imports, directly or through others (itself only if it sits on a cycle)."""
        seen: set[str] = set()
        todo = [start]
        while todo:
            for dep in self.imports_of(todo.pop()):
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        return seen

    def code_files(self, module: str) -> list[Path]:
        """The files of `module` and of everything it imports, sorted; package __init__ files that hold no code
        (has_code) are left out: importing a sub-module runs them, but they cannot change what it does."""
        if module not in self.files:
            raise KeyError(f"module {module!r} is not in the packages {sorted(self.dirs)}")
        modules = {module} | self.closure(module)  # the closure parsed every one of them
        return sorted(self.files[m] for m in modules if self._holds_code[m])

    def fingerprint(self, module: str) -> dict[str, str]:
        """{path relative to `root`: sha256 hex of the file's bytes} for `module` and everything it imports."""
        return {path.relative_to(self.root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
                for path in self.code_files(module)}


@dataclass(frozen=True)
class CodeRef:
    """The code one stage runs: its entry module and the package folders. Picklable (plain strings), so a submitit
    job fingerprints the files itself when it starts, which is the code it imported, even hours after submission."""

    module: str
    dirs: tuple[tuple[str, str], ...]  # (package name, source folder), as from package_dirs()

    @classmethod
    def of(cls, module: str, dirs: Mapping[str, Path | str]) -> "CodeRef":
        return cls(module, tuple(sorted((name, str(folder)) for name, folder in dirs.items())))

    def fingerprint(self) -> dict[str, str]:
        return ModuleGraph(dict(self.dirs)).fingerprint(self.module)


def fingerprint_id(fingerprint: Mapping[str, str]) -> str:
    """sha256 of a fingerprint's canonical JSON: the key of MOVED_CODE_FILE."""
    return hashlib.sha256(json.dumps(dict(fingerprint), sort_keys=True).encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def _moved_code() -> dict[str, dict[str, str]]:
    return json.loads(MOVED_CODE_FILE.read_text()) if MOVED_CODE_FILE.exists() else {}


def as_moved(recorded: Mapping[str, str] | None) -> dict[str, str] | None:
    """A run's recorded fingerprint as today's layout names the same code: a fingerprint recorded by the code just
    before a move (every file, byte for byte) becomes the fingerprint that code had right after it, so moving files
    flags no finished run; any other fingerprint is returned as it is (and differs wherever the code does)."""
    if recorded is None:
        return None
    return _moved_code().get(fingerprint_id(recorded), dict(recorded))


def code_diff(old: Mapping[str, str] | None, new: Mapping[str, str]) -> list[str]:
    """The files whose fingerprint differs between the code that made a run (`old`, from its provenance) and `new`:
    changed, added or removed, sorted. [NOT_RECORDED] when the run recorded none; [] when the code is the same."""
    if old is None:
        return [NOT_RECORDED]
    return sorted(f for f in set(old) | set(new) if old.get(f) != new.get(f))


def mixed_files(fingerprints: list[Mapping[str, str] | None]) -> list[str]:
    """The files whose fingerprint is not the same in every one of `fingerprints` (runs that should share code);
    NOT_RECORDED first when some runs recorded one and others did not. [] when all agree or none recorded any."""
    recorded = [f for f in fingerprints if f is not None]
    out = [NOT_RECORDED] if recorded and len(recorded) < len(fingerprints) else []
    files = set().union(*recorded) if recorded else set()
    return out + sorted(f for f in files if len({fp.get(f) for fp in recorded}) > 1)


def files_text(diffs: Iterable[Iterable[str]]) -> str:
    """The union of what differs over several runs, sorted, e.g. 'core/specscale/model/gpt.py,
    core/specscale/train/train.py'."""
    return ", ".join(sorted(set().union(*map(set, diffs))))
