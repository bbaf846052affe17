"""An import-linter contract type: some modules use only the public names of others.

import-linter's own contracts see modules, not names; this one reads the importers' source.
A name or module is private when its last part starts with one underscore (dunders such as
``__version__`` are public). Registered in pyproject.toml (``contract_types``) as
``public_names``; lint-imports puts the working folder first on the import path, so run it
from the repository root.

Options:
    importers: the packages whose imports are checked (e.g. stylemapgan.commands).
    modules: the packages whose private names and modules they must not use.

Broken by ``from pkg.mod import _name``, ``import pkg._mod`` and ``mod._name`` where ``mod``
is bound by an import of one of ``modules`` (``import pkg.mod as mod``, ``from pkg import mod``).
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def _under(name: str, packages: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _source(module: str) -> tuple[Path, bool] | None:
    """The file of ``module`` (found from its root package, importing nothing) and whether it
    is a package."""
    root, _, rest = module.partition(".")
    spec = importlib.util.find_spec(root)
    if spec is None or not spec.submodule_search_locations:
        return None
    base = Path(next(iter(spec.submodule_search_locations)), *(rest.split(".") if rest else ()))
    if (base / "__init__.py").is_file():
        return base / "__init__.py", True
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py"), False
    return None


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    keep = len(parts) - node.level + (1 if is_package else 0)
    base = ".".join(parts[:keep])
    return f"{base}.{node.module}" if node.module else base


def violations(module: str, targets: list[str], all_modules: set[str]) -> list[str]:
    """What ``module`` uses of the private names and modules of ``targets``."""
    found_file = _source(module)
    if found_file is None:
        return []
    path, is_package = found_file
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[str] = []
    aliases: dict[str, str] = {}  # local name -> a module of targets
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if _under(a.name, targets):
                    if any(_private(p) for p in a.name.split(".")):
                        found.append(f"{module}:{node.lineno} imports the private module {a.name}")
                    aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, module, is_package)
            if not _under(source, targets) and not any(_under(t, [source]) for t in targets):
                continue
            if any(_private(p) for p in source.split(".")) and _under(source, targets):
                found.append(f"{module}:{node.lineno} imports from the private module {source}")
            for a in node.names:
                full = f"{source}.{a.name}"
                if not (_under(source, targets) or _under(full, targets)):
                    continue
                if _private(a.name):
                    found.append(f"{module}:{node.lineno} imports the private name {full}")
                if full in all_modules:
                    aliases[a.asname or a.name] = full
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and _private(node.attr)):
            found.append(f"{module}:{node.lineno} uses the private name "
                         f"{aliases[node.value.id]}.{node.attr}")
    return found


class PublicNamesContract(Contract):
    """``importers`` use only the public names and modules of ``modules``."""

    type_name = "public_names"

    importers = fields.ListField(subfield=fields.StringField())
    modules = fields.ListField(subfield=fields.StringField())

    def check(self, graph, verbose: bool) -> ContractCheck:
        targets = [str(m) for m in self.modules]  # type: ignore[attr-defined]
        found: list[str] = []
        for importer in self.importers:  # type: ignore[attr-defined]
            names = sorted({str(importer), *graph.find_descendants(str(importer))})
            for name in names:
                found.extend(violations(name, targets, set(graph.modules)))
        output.verbose_print(verbose, f"public names: {len(found)} use(s) of private names")
        return ContractCheck(kept=not found, metadata={"found": found})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for line in check.metadata["found"]:
            output.print_error(line, bold=False)
            output.new_line()
