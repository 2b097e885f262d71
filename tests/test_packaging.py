"""Packaging: the wheel's contents, one version, the licence, the lock file, the map."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import carelink

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PACKAGE = ROOT / "src" / "carelink"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(out),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (found,) = out.glob("carelink-*.whl")
    return found


def test_a_built_wheel_holds_the_policy_profiles_and_examples(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        shipped = z.read("carelink/consent_files/policy.json")
    assert shipped == (ROOT / "consent" / "policy.json").read_bytes()
    assert "carelink/consent_files/deid/pseudonymised.json" in names
    examples = {n for n in names if n.startswith("carelink/consent_files/examples/")}
    assert len(examples) == len(list((ROOT / "consent" / "examples").glob("*.json")))
    assert "carelink/fhir/r4_types.json" in names
    profiles = {n for n in names if n.startswith("carelink/profile_files/")}
    assert "carelink/profile_files/UKCore-Patient.json" in profiles
    assert len(profiles) == len(list((ROOT / "profiles").glob("*"))) > 20


def test_the_version_is_written_once_in_the_package_and_read_by_the_build(wheel):
    project = PYPROJECT["project"]
    assert "version" not in project
    assert "version" in project["dynamic"]
    dynamic = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "carelink.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+(?:[.-]?\w+)*", carelink.__version__)
    with zipfile.ZipFile(wheel) as z:
        (metadata,) = (n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(metadata).decode()
    assert f"\nVersion: {carelink.__version__}\n" in text
    assert wheel.name.startswith(f"carelink-{carelink.__version__}-")


def test_no_other_source_file_spells_the_version_out():
    """The app and the CapabilityStatement take ``carelink.__version__``; a second
    literal would drift from it on the next release."""
    literal = carelink.__version__
    spelled = []
    for path in [*PACKAGE.rglob("*.py"), ROOT / "pyproject.toml"]:
        if path == PACKAGE / "__init__.py":
            continue
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(rf"""version\W*[=:]\s*["']{re.escape(literal)}["']""", line):
                spelled.append(f"{path.relative_to(ROOT)}:{lineno}")
    assert spelled == []


def test_the_licence_is_the_apache_2_0_text_pyproject_declares(wheel):
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    for clause in ("1. Definitions.", "4. Redistribution.", "9. Accepting Warranty"):
        assert clause in text
    assert "END OF TERMS AND CONDITIONS" in text
    with zipfile.ZipFile(wheel) as z:
        (shipped,) = (n for n in z.namelist() if n.endswith(".dist-info/licenses/LICENSE"))
        assert z.read(shipped).decode() == text


def _requirements() -> list[Requirement]:
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in [*project["dependencies"], *extras["test"], *extras["load"]]]


def _locked() -> dict[str, tuple[str, int]]:
    """Each package pinned in requirements.lock: its version and how many hashes it has."""
    text = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    pins: dict[str, tuple[str, int]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        first = block.split()[0] if block.strip() else ""
        if "==" in first:
            name, version = first.split("==")
            pins[canonicalize_name(name)] = (version, block.count("--hash=sha256:"))
    return pins


def test_the_lock_pins_every_declared_dependency_within_its_range_with_hashes():
    pins = _locked()
    assert len(pins) > 50
    for name, (_, hashes) in pins.items():
        assert hashes > 0, f"{name} has no hash in requirements.lock"
    for req in _requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in requirements.lock: run scripts/lock"
        version = pins[name][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {name}=={version}, outside {req}: run scripts/lock"
        )


def test_the_gateway_does_not_depend_on_the_load_generator():
    """Locust (with gevent and Flask) is for loadtests/ only: the `load` extra."""
    runtime = {canonicalize_name(Requirement(r).name) for r in PYPROJECT["project"]["dependencies"]}
    assert "locust" not in runtime
    load = PYPROJECT["project"]["optional-dependencies"]["load"]
    assert [Requirement(r).name for r in load] == ["locust"]
    for path in PACKAGE.rglob("*.py"):
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            (node.module or "").split(".")[0]
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.ImportFrom)
        }
        assert not imported & {"locust", "gevent", "flask"}, path


def test_the_architecture_map_names_every_package_and_module():
    """docs/architecture.md is the map: a package or top-level module added under
    src/carelink/ without a line there fails here (the layers are lint-imports')."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [
        f"`{entry.name}/`" if entry.is_dir() else f"`{entry.name}`"
        for entry in sorted(PACKAGE.iterdir())
        if entry.name != "__pycache__" and (entry.is_dir() or entry.suffix == ".py")
        if (f"`{entry.name}/`" if entry.is_dir() else f"`{entry.name}`") not in text
    ]
    assert missing == [], f"docs/architecture.md does not describe {missing}"


def test_the_map_names_every_layer_of_the_import_contract():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    contracts = PYPROJECT["tool"]["importlinter"]["contracts"]
    layered = [c["layers"] for c in contracts if c["type"] == "layers"]
    assert layered
    for layers in layered:  # the packages' layers, and each package's own
        for layer in layers:
            for module in layer.split("|"):
                name = module.strip().removeprefix("carelink.").rsplit(".", 1)[-1]
                assert f"`{name}/`" in text or f"`{name}.py`" in text, name


def _reads_shared(node: ast.AST) -> bool:
    """``"../shared/..."`` as a path, or ``<path> / "shared"``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return re.match(r"(\.\./)+shared(/|$)", node.value) is not None
    return (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Div)
        and isinstance(node.right, ast.Constant)
        and node.right.value == "shared"
    )


def test_nothing_reads_the_team_folder_outside_the_repository():
    """A clone has no ../shared: tests and benchmarks read tests/data/ instead."""
    offenders = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for folder in ("src", "tests", "benchmarks", "loadtests", "scripts")
        for path in (ROOT / folder).rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if _reads_shared(node)
    ]
    assert offenders == []
