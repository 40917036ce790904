"""The predictor Dockerfile (linted as text: Docker cannot run here), the pinned requirements
of both artefacts, and ``make package``'s staging (infrastructure/package.py)."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.infra.cfn import HANDLERS, INFRA, ROOT, ZIP_FUNCTIONS, resources

DOCKERFILE = INFRA / "Dockerfile"
BASE_IMAGE = "public.ecr.aws/lambda/python:3.11"
HEAVY = {"numpy", "pillow", "mxnet"}
DEV_ONLY = {
    "pytest",
    "moto",
    "ruff",
    "mypy",
    "click",
    "onnx",
    "onnxruntime",
    "cfn-lint",
    "aws-sam-translator",
}


@pytest.fixture(scope="module")
def package() -> ModuleType:
    """infrastructure/package.py, the script behind `make package`."""
    spec = importlib.util.spec_from_file_location("batchpredict_package_script", INFRA / "package.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line.removesuffix("\\").strip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            op, _, args = pending.partition(" ")
            out.append((op.upper(), " ".join(args.split())))
            pending = ""
    assert not pending, "dangling continuation line"
    return out


def _args(op: str) -> list[str]:
    return [args for name, args in instructions() if name == op]


def pyproject_pins() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}


def test_dockerfile_builds_on_the_lambda_python_311_base_image() -> None:
    assert _args("FROM") == [BASE_IMAGE]
    assert not [a for a in _args("ADD")], "ADD fetches URLs and unpacks archives: use COPY"


def test_dockerfile_installs_the_pinned_requirements_as_wheels() -> None:
    (pip,) = [run for run in _args("RUN") if "pip install" in run]
    for flag in (
        "--only-binary=:all:",
        '--target "${LAMBDA_TASK_ROOT}"',
        "-r /tmp/deps/requirements.txt",
        "-c /tmp/deps/constraints.txt",
        "--no-cache-dir",
    ):
        assert flag in pip
    assert "COPY requirements.txt constraints.txt /tmp/deps/" in [f"COPY {a}" for a in _args("COPY")]
    # libmxnet.so needs the system's libgomp and libquadmath (Amazon Linux 2: yum).
    assert any("yum install -y libgomp libquadmath" in run for run in _args("RUN"))


def test_dockerfile_runs_the_predict_handler_and_api_overrides_it(cfn: dict[str, Any]) -> None:
    (cmd,) = _args("CMD")
    assert json.loads(cmd) == [HANDLERS["PredictFunction"]]  # exec form, the real handler
    api = cfn["Resources"]["PredictApiFunction"]["Properties"]["ImageConfig"]["Command"]
    for handler in (*json.loads(cmd), *api):
        module = handler.rpartition(".")[0]
        assert importlib.util.find_spec(module) is not None, handler


def test_dockerfile_bakes_the_bundle_where_model_uri_points() -> None:
    assert "model/ /opt/model/" in _args("COPY")
    assert "batchpredict/ ${LAMBDA_TASK_ROOT}/batchpredict/" in _args("COPY")
    (env,) = _args("ENV")
    assert "MODEL_URI=/opt/model" in env.split()


def test_requirement_files_pin_what_pyproject_pins(package: ModuleType) -> None:
    pins = pyproject_pins()
    files = {"predict": package.IMAGE_REQUIREMENTS, "zip": package.ZIP_REQUIREMENTS}
    names = {}
    for label, path in files.items():
        requirements = package.read_requirements(path)
        names[label] = {canonicalize_name(r.name) for r in requirements}
        for req in requirements:
            assert str(req.specifier).startswith("=="), f"{path.name}: {req} is not pinned"
            expected = pins[canonicalize_name(req.name)]
            assert (req.specifier, req.extras) == (expected.specifier, expected.extras), f"{path.name}: {req}"
    assert names["predict"] == set(pins) - {"click"}  # click is the CLI's
    assert names["zip"] == {"aws-lambda-powertools", "boto3", "urllib3"}


def test_zip_dependencies_stay_lean(package: ModuleType) -> None:
    pins = package.constraints(package.read_requirements(package.ZIP_REQUIREMENTS), machine="aarch64")
    names = {p.split("==")[0] for p in pins}
    assert {"aws-lambda-powertools", "aws-xray-sdk", "boto3", "botocore", "urllib3"} <= names
    assert not names & (HEAVY | DEV_ONLY)
    assert all(p.count("==") == 1 for p in pins)


def test_zip_platform_matches_the_template(package: ModuleType, cfn: dict[str, Any]) -> None:
    functions = resources(cfn, "AWS::Lambda::Function")
    assert {tuple(functions[n]["Properties"]["Architectures"]) for n in ZIP_FUNCTIONS} == {
        (package.ZIP_ARCHITECTURE,)
    }
    assert package.ZIP_PLATFORM == "manylinux2014_aarch64"
    assert package.PYTHON_VERSION == "3.11"


def test_staged_image_context_has_everything_the_dockerfile_copies(
    package: ModuleType, bundle_dir: Path, tmp_path: Path
) -> None:
    context = package.stage_image(tmp_path, bundle_dir)
    for copy in _args("COPY"):
        *sources, _ = copy.split()
        for source in sources:
            assert (context / source).exists(), f"COPY {source}: not in the staged context"
    assert (context / "Dockerfile").read_bytes() == DOCKERFILE.read_bytes()
    assert (context / "model" / "model.json").read_bytes() == (bundle_dir / "model.json").read_bytes()
    pins = (context / "constraints.txt").read_text(encoding="utf-8").split()
    assert "mxnet==1.9.1" in pins and "numpy==1.23.5" in pins
    assert not {p.split("==")[0] for p in pins} & DEV_ONLY
    shipped = {
        p.relative_to(context / "batchpredict").as_posix() for p in (context / "batchpredict").rglob("*")
    }
    assert {"handlers/predict.py", "handlers/predict_api.py", "model.py"} <= shipped
    assert not any(p.startswith("local") or "__pycache__" in p for p in shipped)


def _top_level_names(tree: ast.Module) -> set[str]:
    """The names a module defines, ``if TYPE_CHECKING:`` and ``try:`` blocks included."""
    names: set[str] = set()
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If | ast.Try):
            pending += [*node.body, *node.orelse, *getattr(node, "finalbody", [])]
            pending += [stmt for handler in getattr(node, "handlers", []) for stmt in handler.body]
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def _unresolved(root: Path) -> dict[str, list[str]]:
    """Per file under ``root/batchpredict``, what it imports of ``batchpredict`` (at the top or
    inside a function) that nothing beside it provides: no such module, or no such name in it."""
    paths = sorted((root / "batchpredict").rglob("*.py"))
    names = [".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__") for p in paths]
    trees = {name: (path, ast.parse(path.read_text())) for name, path in zip(names, paths, strict=True)}
    missing: dict[str, list[str]] = {}
    for path, tree in trees.values():
        wanted: list[str] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                wanted += [alias.name for alias in node.names if alias.name.split(".")[0] == "batchpredict"]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "batchpredict":
                module = str(node.module)
                if module not in trees:
                    wanted.append(module)
                    continue
                defined = _top_level_names(trees[module][1])
                wanted += [
                    f"{module}.{alias.name}"
                    for alias in node.names
                    if f"{module}.{alias.name}" not in trees and alias.name not in defined
                ]
        if unresolved := sorted({name for name in wanted if name not in trees}):
            missing[path.relative_to(root).as_posix()] = unresolved
    return missing


def test_the_user_side_is_not_shipped_and_no_function_needs_it(
    package: ModuleType, bundle_dir: Path, tmp_path: Path
) -> None:
    context = package.stage_image(tmp_path, bundle_dir)
    code = tmp_path / "zip"
    package.copy_package(code)  # the code build_zip puts beside the zip functions' dependencies
    archive = tmp_path / "code.zip"
    package.write_zip(code, archive)
    with zipfile.ZipFile(archive) as zf:
        zipped = {name for name in zf.namelist() if name.endswith(".py")}
    imaged = {p.relative_to(context).as_posix() for p in (context / "batchpredict").rglob("*.py")}
    assert zipped == imaged and {"batchpredict/handlers/predict.py", "batchpredict/wiring.py"} <= zipped
    assert not [name for name in zipped if name.startswith(("batchpredict/cli/", "batchpredict/local/"))]
    assert (package.PACKAGE / "cli" / "group.py").is_file()  # there is a CLI to leave out

    assert _unresolved(code) == {}
    # The same code imported for real, on its own: every handler of the template.
    handlers = sorted({handler.rpartition(".")[0] for handler in HANDLERS.values()})
    script = (
        "import importlib, sys\n"
        f"sys.path.insert(0, {str(code)!r})\n"
        f"for name in {handlers!r}: importlib.import_module(name)\n"
        "print(sys.modules['batchpredict'].__file__)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('batchpredict.cli', 'batchpredict.local'))))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [str(code / "batchpredict" / "__init__.py"), "[]"]


def test_the_import_walk_finds_an_import_of_the_cli(tmp_path: Path) -> None:
    (tmp_path / "batchpredict" / "handlers").mkdir(parents=True)
    (tmp_path / "batchpredict" / "__init__.py").write_text("")
    (tmp_path / "batchpredict" / "jobs.py").write_text("X = 1\n")
    (tmp_path / "batchpredict" / "handlers" / "split.py").write_text(
        "from batchpredict import jobs\nfrom batchpredict.jobs import X\nimport batchpredict.jobs\n"
        "def handler():\n"
        "    from batchpredict.cli.client import StackRef\n"
        "    from batchpredict import local\n"
        "    from batchpredict.jobs import Y\n"
    )
    unresolved = ["batchpredict.cli.client", "batchpredict.jobs.Y", "batchpredict.local"]
    assert _unresolved(tmp_path) == {"batchpredict/handlers/split.py": unresolved}


def test_zip_archives_are_deterministic(package: ModuleType, tmp_path: Path) -> None:
    folder = tmp_path / "code"
    (folder / "pkg").mkdir(parents=True)
    (folder / "pkg" / "b.py").write_text("B = 2\n")
    (folder / "a.py").write_text("A = 1\n")
    first, second = tmp_path / "1.zip", tmp_path / "2.zip"
    assert package.write_zip(folder, first) == 12
    (folder / "a.py").touch()  # a newer mtime changes nothing
    package.write_zip(folder, second)
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as zf:
        assert zf.namelist() == ["a.py", "pkg/b.py"]
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_make_package_runs_the_script() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    target = makefile[makefile.index("\npackage:") :].split("\n\n")[0]
    assert "infrastructure/package.py --out build/package" in target
