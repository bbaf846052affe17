"""The import layering of the package (the import-linter contracts in pyproject.toml) holds, and
the check really fails when a module imports a layer above its own."""

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "stylemapgan"
# import-linter has no `python -m` entry point; run its console-script function with this
# interpreter, so the check does not depend on PATH.
LINT = [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"]
# The contracts' names (pyproject.toml, [[tool.importlinter.contracts]]).
LAYERS = ("Layers: cli > commands > web > training > metrics > editing > formats|data > "
          "imaging|nn > files|utils|config > errors")
ONLY_CLI = "Only the command line imports the command line and the web server"
CLI_NOT_WEB = "The web server is started by a command (`stylemapgan serve`), not by the CLI module"
EDITING = "Editing and metrics never import training, the command line or the web server"
ROOT_BOTTOM = "The package root imports only the bottom layers (config, errors, files, utils)"
PUBLIC = "The command line and the web server use only the public names of the layers below"
CONTRACTS = (LAYERS, ONLY_CLI, CLI_NOT_WEB, EDITING, ROOT_BOTTOM, PUBLIC)


def _lint(src: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with the contracts of pyproject.toml, analysing the package in ``src``
    (put first on the path, so an installed copy is not analysed instead)."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([*LINT, "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_contracts_hold_on_the_tree():
    r = _lint(ROOT / "src")
    out = " ".join(r.stdout.split())
    assert r.returncode == 0, r.stdout + r.stderr
    for name in CONTRACTS:
        assert f"{name} KEPT" in out, (name, r.stdout)
    assert "6 kept, 0 broken" in out, r.stdout


def test_a_forbidden_import_breaks_the_contracts(tmp_path):
    copy = tmp_path / "src" / "stylemapgan"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "assets"))
    for rel, line in (("imaging/masks.py", "import stylemapgan.web.app"),
                      ("editing/operations.py", "from stylemapgan.training import Trainer"),
                      ("cli.py", "from stylemapgan.web import app"),
                      ("commands/info.py", "import stylemapgan.cli"),
                      ("__init__.py", "import stylemapgan.nn.networks"),
                      # allowed by the layers, but a private name of a lower layer
                      ("web/gallery.py", "from stylemapgan.imaging.placement import _scale"),
                      ("commands/info.py", "from stylemapgan.editing import operations as ops\n"
                                           "ops._check_pair")):
        path = copy / rel
        path.write_text(path.read_text() + f"\n{line}  # noqa: E402, F401\n")
    r = _lint(tmp_path / "src")
    out = " ".join(r.stdout.split())  # the report wraps long lines
    assert r.returncode == 1, r.stdout + r.stderr
    # Every injected import is reported (so the copy, not the real tree, was analysed) ...
    for chain in ("stylemapgan.imaging.masks -> stylemapgan.web.app",
                  "stylemapgan.editing.operations -> stylemapgan.training",
                  "stylemapgan.cli -> stylemapgan.web.app",
                  "stylemapgan.commands.info -> stylemapgan.cli",
                  "stylemapgan -> stylemapgan.nn.networks",
                  "imports the private name stylemapgan.imaging.placement._scale",
                  "uses the private name stylemapgan.editing.operations._check_pair"):
        assert chain in out, (chain, r.stdout)
    # ... and every contract is shown to bite.
    for name in CONTRACTS:
        assert f"{name} BROKEN" in out, (name, r.stdout)
    assert "0 kept, 6 broken" in out, r.stdout


def _old_flat_names() -> set[str]:
    """The flat module names of the first layout, removed in issue 24 (the version was 0.1.0
    and nothing depended on them)."""
    return {"avatars", "checkpoint", "directions", "editor", "images", "layers", "losses",
            "masks", "networks", "onnx_export", "ops", "perceptual", "runtime", "stylemaps",
            "weights"}


def test_the_old_flat_names_are_gone():
    for name in sorted(_old_flat_names()):
        assert importlib.util.find_spec(f"stylemapgan.{name}") is None, name
    assert not (PACKAGE / "_compat").exists()


def test_the_package_does_not_import_the_old_flat_names():
    old = _old_flat_names()
    assert "checkpoint" in old
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                parts = name.split(".")
                if len(parts) >= 2 and parts[0] == "stylemapgan" and parts[1] in old:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {name}")
    assert not found, "use the new module names (stylemapgan.LAYER.NAME): " + "; ".join(found)


def test_test_files_mirror_the_package_and_have_unique_names():
    """The test folders mirror the package (tests/editing for stylemapgan/editing, ...; tests/cli
    for cli.py and commands/, tests/tools for tools/ and benchmarks/), and no two test files share
    a basename: the folders have no ``__init__.py``, so pytest's default ``prepend`` import mode
    imports each test file (and ``from test_training import ...``) by its basename alone."""
    tests = ROOT / "tests"
    files = sorted(p for p in tests.rglob("test_*.py") if "fixtures" not in p.parts)
    by_name: dict[str, list[str]] = {}
    for p in files:
        by_name.setdefault(p.name, []).append(str(p.relative_to(tests)))
    assert not {n: ps for n, ps in by_name.items() if len(ps) > 1}, "test file names clash"
    assert not list(tests.rglob("__init__.py")), "a test folder became a package"
    folders = {p.parent.relative_to(tests).parts[0] for p in files if p.parent != tests}
    mirrored = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()} | {"cli", "tools"}
    assert folders <= mirrored, f"test folders that mirror nothing: {sorted(folders - mirrored)}"
    assert {p.name for p in tests.glob("test_*.py")} <= {
        "test_one_core.py", "test_layering.py", "test_security.py"}
