"""Build the deployment artefacts into build/package (``make package``).

``lambda/`` and ``batchpredict-lambda-arm64.zip``
    The code of the zip functions (split_manifest, finalize, reconcile) with their pinned
    dependencies (requirements-zip.txt), installed for the Lambda platform: Python 3.11 on
    arm64 (Graviton), manylinux2014 wheels only. ``lambda/`` is the template's CodeUri for
    ``sam build``; the zip (deterministic: sorted entries, fixed timestamps) is the same
    content for ``aws lambda update-function-code``.
``image/``
    The Docker build context of the predictor image (template Metadata.DockerContext):
    infrastructure/Dockerfile, requirements-predict.txt, the package and the model bundle.

Every transitive dependency is constrained (``constraints.txt``) to the version installed in
the environment running this script, the one the test suite ran with.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infrastructure"
PACKAGE = ROOT / "functions" / "batchpredict"
ZIP_REQUIREMENTS = INFRA / "requirements-zip.txt"
IMAGE_REQUIREMENTS = INFRA / "requirements-predict.txt"
DOCKERFILE = INFRA / "Dockerfile"

# The zip functions' platform: see the template's header for why arm64.
ZIP_ARCHITECTURE = "arm64"
ZIP_PLATFORM = "manylinux2014_aarch64"  # glibc 2.17 wheels: the python3.11 runtime has glibc 2.26
PYTHON_VERSION = "3.11"
# Markers of the Lambda platform, to follow only the dependencies it installs.
LAMBDA_MARKERS = {
    "python_version": PYTHON_VERSION,
    "python_full_version": f"{PYTHON_VERSION}.0",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "os_name": "posix",
    "platform_system": "Linux",
}
UNZIPPED_LIMIT = 250 * 1024 * 1024  # Lambda's limit for a zip function, layers included
# Not shipped: caches, the local stack (it needs moto) and the user's side (the CLI, its stack
# client, report and model import: it needs click); no function imports either.
EXCLUDED_DIRS = frozenset({"__pycache__", "local", "cli"})
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def read_requirements(path: Path) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [Requirement(line) for line in lines if line]


def constraints(requirements: Iterable[Requirement], machine: str) -> list[str]:
    """``name==version`` for every distribution the requirements pull in on Lambda (sorted),
    at the versions installed here; the requirements' own pins included."""
    pins: dict[str, str] = {}
    expanded: set[tuple[str, str]] = set()  # (distribution, extra) whose requirements were followed
    # Each entry: a requirement and the extra of its parent it was listed under ("" for none).
    pending = [(req, "") for req in requirements]
    while pending:
        req, parent_extra = pending.pop()
        if req.marker is not None and not req.marker.evaluate(
            LAMBDA_MARKERS | {"platform_machine": machine, "extra": parent_extra}
        ):
            continue
        name = canonicalize_name(req.name)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError as exc:
            raise SystemExit(f"{req.name} is not installed here: set up .venv first (make)") from exc
        if not req.specifier.contains(dist.version, prereleases=True):
            raise SystemExit(f"{req} wanted, {dist.version} installed: reinstall .venv first")
        pins[name] = dist.version
        for extra in ["", *sorted(req.extras)]:
            if (name, extra) in expanded:
                continue
            expanded.add((name, extra))
            pending.extend((Requirement(raw), extra) for raw in dist.requires or [])
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def _package_files(source: Path) -> Iterator[Path]:
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if path.is_file() and not EXCLUDED_DIRS.intersection(relative.parts) and path.suffix != ".pyc":
            yield relative


def copy_package(dest: Path, source: Path = PACKAGE) -> None:
    """functions/batchpredict into ``dest/batchpredict``, without caches, the local stack and the CLI."""
    target = dest / "batchpredict"
    for relative in _package_files(source):
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / relative, target / relative)


def write_zip(folder: Path, archive: Path) -> int:
    """Zip a folder deterministically; returns the unzipped size in bytes."""
    size = 0
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(path.relative_to(folder).as_posix(), date_time=ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            data = path.read_bytes()
            size += len(data)
            zf.writestr(info, data, compresslevel=9)
    return size


def _fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def stage_image(out: Path, bundle: Path) -> Path:
    """The predictor image's Docker build context (no Docker needed to stage it)."""
    if not (bundle / "model.json").is_file():
        raise SystemExit(f"{bundle}/model.json not found: build the bundle with `make model`")
    context = _fresh(out / "image")
    shutil.copy2(DOCKERFILE, context / "Dockerfile")
    shutil.copy2(IMAGE_REQUIREMENTS, context / "requirements.txt")
    pins = constraints(read_requirements(IMAGE_REQUIREMENTS), machine="x86_64")
    (context / "constraints.txt").write_text("\n".join(pins) + "\n", encoding="utf-8")
    copy_package(context)
    shutil.copytree(bundle, context / "model")
    return context


def build_zip(out: Path) -> Path:
    """Code + dependencies for the zip functions, for Python 3.11 on arm64 Lambda."""
    folder = _fresh(out / "lambda")
    constraints_file = out / "constraints-lambda.txt"
    pins = constraints(read_requirements(ZIP_REQUIREMENTS), machine="aarch64")
    constraints_file.write_text("\n".join(pins) + "\n", encoding="utf-8")
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--target", str(folder),
            "--platform", ZIP_PLATFORM, "--implementation", "cp", "--python-version", PYTHON_VERSION,
            "--only-binary=:all:", "--no-compile",
            "-r", str(ZIP_REQUIREMENTS), "-c", str(constraints_file),
        ],
        check=True,
    )  # fmt: skip
    shutil.rmtree(folder / "bin", ignore_errors=True)  # console scripts: not used on Lambda
    copy_package(folder)
    archive = out / f"batchpredict-lambda-{ZIP_ARCHITECTURE}.zip"
    size = write_zip(folder, archive)
    print(f"{archive}: {archive.stat().st_size / 2**20:.1f} MiB zipped, {size / 2**20:.1f} MiB unzipped")
    if size > UNZIPPED_LIMIT:
        raise SystemExit(f"{folder} is {size} bytes: over Lambda's {UNZIPPED_LIMIT} for a zip function")
    return archive


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "package")
    parser.add_argument("--bundle", type=Path, default=ROOT / "build" / "model" / "efficientnet-lite0")
    parser.add_argument("--only", choices=("zip", "image"), help="build just one of the two")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "zip"):
        build_zip(args.out)
    if args.only in (None, "image"):
        context = stage_image(args.out, args.bundle)
        print(f"{context}: the predictor image's build context (sam build builds it)")


if __name__ == "__main__":
    os.umask(0o022)
    main()
