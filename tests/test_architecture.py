"""docs/ARCHITECTURE.md's module map is the code's: every module has a row, every row's imports are the module's
imports (read from the source with ast), and no import runs against the layering the document states."""

import ast
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("trainer", "beam_pipelines", "benchmarks")
# Imported by the Beam launchers at module level: the standard library (and each other) only.
STDLIB_ONLY = ("trainer/features.py", "trainer/dataset_contract.py", "trainer/model_contract.py", "trainer/storage.py",
               "trainer/provenance.py", "trainer/credentials.py", "trainer/logger.py", "trainer/config.py")


def modules() -> dict:
    return {f"{package}/{path.name}": path for package in PACKAGES for path in sorted((REPO / package).glob("*.py"))
            if path.name != "__init__.py"}


def project_imports(path: Path, module_level_only: bool = False) -> set[str]:
    """`package.module` names of the project modules a file imports (anywhere in it, or at module level only)."""
    known = {name[:-3].replace("/", ".") for name in modules()}
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                      for alias in node.names}
    own = path.parent.name + "." + path.stem
    return {name for name in found if name in known and name != own}


def external_imports_at_module_level(path: Path) -> set[str]:
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found - set(PACKAGES)


def documented() -> dict:
    """{module path: set of imports} from the module map's tables."""
    rows = {}
    for line in (REPO / "docs" / "ARCHITECTURE.md").read_text().splitlines():
        match = re.match(r"^\| `((?:trainer|beam_pipelines|benchmarks)/\w+\.py)` \|(.*)\|(.*)\|$", line)
        if match:
            package = match.group(1).split("/")[0]
            names = [name.strip() for name in match.group(3).split(",") if name.strip()]
            rows[match.group(1)] = {name if "." in name else f"{package}.{name}" for name in names}
    return rows


def test_every_module_has_one_row_and_no_row_names_a_missing_module():
    assert set(documented()) == set(modules())


@pytest.mark.parametrize("name", sorted(modules()))
def test_the_documented_imports_are_the_modules_imports(name):
    assert documented().get(name) == project_imports(modules()[name]), (
        f"update {name}'s row in docs/ARCHITECTURE.md's module map")


@pytest.mark.parametrize("name", sorted(modules()))
def test_imports_follow_the_layering(name):
    imported = {other.split(".")[0] for other in project_imports(modules()[name])}
    allowed = {"trainer": {"trainer"}, "beam_pipelines": {"trainer", "beam_pipelines"},
               "benchmarks": set(PACKAGES)}[name.split("/")[0]]
    assert imported <= allowed, f"{name} imports {imported - allowed}"


@pytest.mark.parametrize("name", STDLIB_ONLY)
def test_contract_modules_import_only_the_standard_library_at_module_level(name):
    assert external_imports_at_module_level(modules()[name]) <= set(sys.stdlib_module_names), name


def test_the_checks_can_fail():
    """The readers above see what they must: a known import, and a third-party import at module level."""
    assert "trainer.model_contract" in project_imports(modules()["trainer/publish.py"])
    assert "apache_beam" in external_imports_at_module_level(modules()["beam_pipelines/listing.py"])
    assert documented()["trainer/publish.py"] == {"trainer.model_contract", "trainer.storage"}
