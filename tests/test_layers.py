"""The house rules that keep the code navigable: layers that import one way (import-linter's
contracts in pyproject.toml), no function-level import of our own modules outside the CLI,
one owner for every public file name, and import names that cannot collide with other
distributions."""

from __future__ import annotations

import ast
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = {"pipeline": "openwit.pipeline", "model": "openwit.model", "queries": "openwit.queries"}
# The CLI imports each command's modules only when that command runs (startup time).
LAZY_IMPORTS_ALLOWED = {ROOT / "pipeline" / "apps" / "cli.py"}
LAYOUT = ROOT / "pipeline" / "core" / "layout.py"


def source_files():
    for folder in PACKAGES:
        yield from sorted((ROOT / folder).rglob("*.py"))


def lint_imports(config: pathlib.Path, tmp_path) -> subprocess.CompletedProcess:
    executable = shutil.which("lint-imports", path=os.path.dirname(sys.executable))
    assert executable, "import-linter is a dev dependency: pip install -e '.[dev]'"
    return subprocess.run([executable, "--no-cache", str(config)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)


def test_layer_contracts_are_kept(tmp_path):
    result = lint_imports(ROOT / "pyproject.toml", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_broken_contract_fails(tmp_path):
    # The applications do import the model: a contract forbidding it must be reported broken,
    # which shows that the check reads the real imports.
    config = tmp_path / "broken.toml"
    config.write_text(textwrap.dedent("""
        [tool.importlinter]
        root_packages = ["openwit.pipeline", "openwit.model", "openwit.queries"]

        [[tool.importlinter.contracts]]
        name = "apps without the model"
        type = "forbidden"
        source_modules = ["openwit.pipeline.apps"]
        forbidden_modules = ["openwit.model"]
    """))
    result = lint_imports(config, tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout


def own_imports_inside_functions(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = ["." * node.level + (node.module or "")]
            found += [f"{path.relative_to(ROOT)}:{node.lineno} {name}" for name in names
                      if name.startswith(("openwit", ".", *PACKAGES))]
    return found


def test_no_function_level_import_of_our_modules_outside_the_cli():
    found = [entry for path in source_files() if path not in LAZY_IMPORTS_ALLOWED
             for entry in own_imports_inside_functions(path)]
    assert not found, "function-level imports of openwit modules:\n" + "\n".join(found)


def test_no_module_imports_the_bare_folder_names():
    bare = []
    for path in [*source_files(), *sorted((ROOT / "tests").glob("*.py")),
                 *sorted((ROOT / "benchmarks").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            bare += [f"{path.relative_to(ROOT)}:{node.lineno} {name}" for name in names
                     if name.split(".")[0] in PACKAGES]
    assert not bare, "import openwit.<package>, not the folder:\n" + "\n".join(bare)


# Every public name of the corpus folder, the query table and the run folder. File names
# are looked for anywhere; folder names, which are also common dict keys ("shards"), where a
# path is joined.
PUBLIC_FILES = ("sizes.json", "stats.json", "query_counts.parquet", "curated.parquet",
                "queries.parquet", "latest.pt", "metrics.jsonl", "eval.json", "tokenizer.json",
                "openwit-queries")
PUBLIC_FOLDERS = ("shards", "failures", "_work", "checkpoints")
PUBLIC_NAMES = PUBLIC_FILES + PUBLIC_FOLDERS


def stray_names(path: pathlib.Path) -> list[str]:
    strays = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and node.value in PUBLIC_FILES:
            strays.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("join"):
            strays += [f"{path.relative_to(ROOT)}:{arg.lineno} {arg.value!r}" for arg in node.args
                       if isinstance(arg, ast.Constant) and arg.value in PUBLIC_FOLDERS]
    return strays


def test_every_public_file_name_is_defined_once_in_the_layout():
    strays = [entry for path in source_files() if path != LAYOUT for entry in stray_names(path)]
    assert not strays, "use openwit.pipeline.core.layout:\n" + "\n".join(strays)
    layout = LAYOUT.read_text()
    for name in PUBLIC_NAMES:
        assert layout.count(f' = "{name}"') == 1, name


STAND_IN = '''
"""A stand-in for another distribution's top-level `{name}` package."""
OWNER = "someone else"
'''


def test_import_names_do_not_collide_with_other_distributions(tmp_path):
    """PyPI has distributions that install top-level `queries` and `pipeline` packages, and
    users have `model` modules; with those on the path, both theirs and openwit's import."""
    for name in PACKAGES:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(STAND_IN.format(name=name))
    script = textwrap.dedent("""
        import model, pipeline, queries
        assert {model.OWNER, pipeline.OWNER, queries.OWNER} == {"someone else"}
        from openwit.pipeline.core import layout
        from openwit.queries.table import load_query_strings
        from openwit.model.options import TrainConfig
        from openwit.pipeline.apps.cli import main
        import model, pipeline, queries
        assert {model.OWNER, pipeline.OWNER, queries.OWNER} == {"someone else"}
        assert layout.__name__ == "openwit.pipeline.core.layout"
        print("both importable")
    """)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    # Run outside the checkout: there, the folders pipeline/, model/, queries/ would be the
    # bare names themselves.
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "both importable" in result.stdout


@pytest.mark.parametrize("command", ["curate", "train", "queries", "web"])
def test_the_console_script_runs_outside_the_checkout(tmp_path, command):
    openwit = shutil.which("openwit", path=os.path.dirname(sys.executable))
    assert openwit
    result = subprocess.run([openwit, command, "--help"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"usage: openwit {command}" in result.stdout


def test_every_package_folder_is_installed():
    """An editable install finds any folder; a wheel (a worker's container) holds only the
    packages pyproject.toml lists, so a folder missing there imports here and fails there."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    folders = {".".join([PACKAGES[path.relative_to(ROOT).parts[0]],
                         *path.parent.relative_to(ROOT).parts[1:]])
               for folder in PACKAGES for path in (ROOT / folder).rglob("__init__.py")}
    assert folders == listed
