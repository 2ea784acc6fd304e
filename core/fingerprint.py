"""Which code made a run: the import graph of the package, read from source, and a per-file fingerprint of the code
one stage runs (its entry module and every specscale module it imports, directly or not).

The fingerprint is {file path relative to the code root: sha256 of the file's bytes}. Recorded in each run's
provenance.json, it lets the launcher, `specscale status` and `plan --why` name the files that changed since a
cached run was made, and the fit flag a β whose widths were made by different code. tests/test_layering.py checks
the package's structure on the same graph.

Core never imports the stage scripts: the caller passes the folder of `specscale.stages` (and the entry module's
name), this module only reads files.
"""

from __future__ import annotations

import ast
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

# a run made before fingerprints were recorded: the one "file" its difference can name
NOT_RECORDED = "(code not recorded)"


def package_dirs(stages_dir: Path | str | None = None) -> dict[str, Path]:
    """Package name → source folder of the installed specscale (pyproject's package-dir mapping); the stage scripts'
    folder only when the caller (above core) names it."""
    core = Path(__file__).resolve().parent
    dirs = {"specscale": core, "specscale.optim": core / "optim"}
    if stages_dir is not None:
        dirs["specscale.stages"] = Path(stages_dir).resolve()
    return dirs


class ModuleGraph:
    """Every module of the given packages (one level of *.py per package folder) and the specscale modules each one
    imports anywhere in its file (module level or inside functions: a lazy import is still code the module runs)."""

    def __init__(self, dirs: Mapping[str, Path | str]) -> None:
        self.dirs = {name: Path(folder) for name, folder in dirs.items()}
        files: dict[str, Path] = {}
        for package, folder in self.dirs.items():
            for path in sorted(folder.glob("*.py")):
                files[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
        self.files = files
        self._parsed: dict[str, set[str]] = {}  # parsed on demand: a fingerprint needs only one closure

    @cached_property
    def imports(self) -> dict[str, set[str]]:
        """Module → the specscale modules it imports, for every module of the packages."""
        return {name: self.imports_of(name) for name in self.files}

    @cached_property
    def root(self) -> Path:
        """The folder fingerprints are relative to: the deepest folder holding every package (the repository for
        an editable install, so paths read core/train.py, stages/train.py)."""
        return Path(os.path.commonpath([str(p) for p in self.dirs.values()]))

    def imports_of(self, name: str) -> set[str]:
        """The modules of the packages that `name` names in an import statement (`import a.b`, `from a.b import c`
        gives a.b and a.b.c if that is a module; relative imports resolved)."""
        if name in self._parsed:
            return self._parsed[name]
        path = self.files[name]
        package = name if path.stem == "__init__" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
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
        """The files of `module` and of everything it imports, sorted."""
        if module not in self.files:
            raise KeyError(f"module {module!r} is not in the packages {sorted(self.dirs)}")
        return sorted(self.files[m] for m in {module} | self.closure(module))

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
    """The union of what differs over several runs, sorted, e.g. 'core/model.py, core/train.py'."""
    return ", ".join(sorted(set().union(*map(set, diffs))))
