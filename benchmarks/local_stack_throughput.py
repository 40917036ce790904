"""Images/s of a whole job on the embedded local stack, against this machine's bound for the work no
design can avoid (decode + inference CPU), with what the job would cost on Lambda.

The workload: ``--photos`` distinct JPEGs of web sizes (640 px to 12 MP on the longer side, several
crops, grains and qualities, some progressive), made from the sample photos, deterministic and
cached under build/bench/. A separate ``python -m http.server`` process serves them on loopback;
the manifest repeats them to ``--images`` lines, each with its own URL.

The reference, measured in this run in fresh processes: decode CPU per image (``time.process_time``
of ``batchpredict.images.decode_image(data, engine.spec.preprocess)`` over the manifest's photos,
the production decode path) and inference CPU per image (process CPU of the 1-thread engine,
``load_model(resolve_bundle(model), 32, 1)``, at batch 32). The bound is
``cores / (decode + inference CPU-s per image)``: no pipeline on this machine can beat it.

A job leg starts the local stack as ``batchpredict local run`` does (moto server, DynamoDB Local,
worker processes provisioned from the SAM template, one predict worker per core) in a subprocess,
submits the manifest and waits for COMPLETED. It prints images/s end to end (upload -> COMPLETED)
and against the bound; the predict workers' CPU per image against decode + inference; where the
CPU went (every process read from /proc over the job: the workers, DynamoDB Local, moto server,
the file server, the rest of the machine); and, from the predict workers' REPORT lines, the GB-s
and the Lambda cost per million images beside the original AWS blog design's.

Billing: the current code's predict workers run on CPU slots (cpu_slots.py: each on as many
cores as its memory buys, in turn, the time it waits for them not billed), so their REPORT lines
estimate what Lambda would bill however many share the machine. For every leg the report prints
predict's GB-s per manifest line (REPORT lines, and the job's _summary.json), the floor (memory GB
x decode + inference CPU-s per image / vCPUs: every vCPU busy all the time) and the ratio, and
images/s against the bound. ``--workers 1 2`` runs a leg with each worker count and prints the
GB-s of each against the first's; ``--no-cpu-slots`` lets the workers share the cores freely.

``--fidelity exact fast`` runs a leg at each fidelity (the job's option, S3 metadata
``fidelity``; the leg's line shows the fidelity _summary.json recorded). Each fidelity has its
own reference: the decode CPU is measured with ``decode_image(..., fidelity=...)``, with the
share of the lines whose tensor fast changes (it drafts only big JPEGs); the inference CPU is
the one engine's (fidelity.engine_for gives fast no engine of its own yet). So a fast leg is
held against fast's bound and floor, and the report prints fast's GB-s and images/s against
exact's, run by run. Without the flag no option is sent (the job's default, exact).

``--before REF`` runs the same job on the code of git REF (a worktree under build/bench/, its
``functions/`` first on PYTHONPATH) right before each run of the current code, on the same
workload and machine. Its local stack is its own, with two equalisers so the ratio is that of the
code under test: the current REPORT accounting (report_shim/, for trees whose runner writes no
REPORT lines) and the current DynamoDB Local JVM flags (``--before-own-jvm`` keeps its own).
``--tarpit-percent P`` points P% of the lines at a separate server process that accepts
connections and never answers; those lines must end FAILED fetch_timeout, and the rate printed is
that of the rest (``--fetch-total-timeout S`` sets the stack's FETCH_TOTAL_TIMEOUT, else the
function's own applies). ``--clean-peer`` also runs the current code on the same lines with no
tarpit right before each tarpit run, so the rate of the rest is compared with a peer on the same
load. ``--compare-images N`` also runs the current code on a job of N lines right before each
current run and prints the ratio of the two rates (does the stack slow down with a job's size,
e.g. ``--images 20000 --compare-images 2000``). ``--repeat N`` runs the legs N times and prints
the range.

Usage::

    python benchmarks/local_stack_throughput.py [--images 1000] [--photos 300] [--repeat 1]
        [--before 9ac1592] [--tarpit-percent 2 [--clean-peer] [--fetch-total-timeout 5]]
        [--compare-images 2000] [--workers 1 2] [--fidelity exact fast] [--threads N] [--no-cpu-slots]
        [--model build/model/efficientnet-lite0] [--samples build/samples]
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Only the standard library at module level: a job leg runs this file with an older tree's
# batchpredict first on PYTHONPATH, and the server processes need nothing else.

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()
BENCH = ROOT / "build" / "bench"
REPORT_SHIM = SCRIPT.parent / "report_shim"
PREDICT = "PredictFunction"
FINAL = ("COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED")
# batchpredict.fidelity.Fidelity's values, spelled out: this module imports only the standard
# library at its top (its leg processes may run an older tree's batchpredict).
FIDELITIES = ("exact", "fast")

# --- the workload ---------------------------------------------------------------------------

WORKLOAD_VERSION = 1  # bump when the recipe below changes: the cache folder is keyed by it
LONG_SIDE = (640, 4000)  # pixels of the longer side; 4000 x 3000 = 12 MP
MAX_PIXELS = 12_000_000
QUALITIES = (70, 75, 80, 85, 90, 95)
SOURCE_SUFFIXES = (".jpg", ".jpeg", ".png")

# --- the reference and the price of a GB-s ----------------------------------------------------

REFERENCE_BATCH = 32  # the engine's MAX_BATCH


@dataclass(frozen=True)
class LambdaPrice:
    architecture: str
    gb_second: float  # USD per GB-s, first tier
    request: float  # USD per request


# AWS Lambda on-demand list prices, us-east-1, first pricing tier (the first 6 billion GB-s a month on
# x86_64, 7.5 billion on arm64), as published on https://aws.amazon.com/lambda/pricing/ and unchanged
# since the 1 ms billing of December 2020; read 2026-11-30. The predict function is x86_64 (MXNet).
LAMBDA_PRICES = {
    "x86_64": LambdaPrice("x86_64", 0.0000166667, 0.20 / 1_000_000),
    "arm64": LambdaPrice("arm64", 0.0000133334, 0.20 / 1_000_000),
}
# The design this project grew out of (AWS blog "Seamlessly Scale Predictions with AWS Lambda and
# MXNet"): one image per request, 1.18 s per request as published, at an assumed 1.5 GB.
BLOG_SECONDS_PER_IMAGE = 1.18
BLOG_MEMORY_GB = 1.5


# ============================================================================ /proc


def clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float | None:
    """User + system CPU seconds of a live process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / clock_ticks()


def machine_busy() -> float:
    """CPU seconds every core of the machine spent busy since boot (all processes, the kernel)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / clock_ticks()


def children(parent: int, marker: bytes) -> list[int]:
    """Pids of ``parent``'s children whose command line contains ``marker``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent and marker in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


# ============================================================================ workload


@dataclass(frozen=True)
class Photo:
    name: str
    width: int
    height: int
    bytes: int
    quality: int
    progressive: bool


@dataclass
class Workload:
    folder: Path
    photos: list[Photo]

    def describe(self) -> str:
        mp = sorted(p.width * p.height / 1e6 for p in self.photos)
        total = sum(p.bytes for p in self.photos)
        density = total / sum(p.width * p.height for p in self.photos)
        return (
            f"{len(self.photos)} distinct JPEGs: {min(mp):.2f} to {max(mp):.1f} MP (median "
            f"{statistics.median(mp):.1f}), {total / 1e6:.0f} MB ({density:.2f} bytes/pixel), quality "
            f"{min(p.quality for p in self.photos)}-{max(p.quality for p in self.photos)}, "
            f"{sum(p.progressive for p in self.photos)} progressive; in {self.folder}"
        )


def make_photo(source: Any, stem: str, index: int, seed: int) -> tuple[bytes, Photo]:
    """One deterministic photo: a crop of ``source``, scaled to a web size, with grain, as a JPEG."""
    import numpy as np
    from PIL import Image

    rng = random.Random(seed * 1_000_003 + index)
    width, height = source.size
    crop_w = max(64, round(width * rng.uniform(0.55, 1.0)))
    crop_h = max(64, round(height * rng.uniform(0.55, 1.0)))
    left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
    image = source.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.25:  # some portraits
        image = image.transpose(Image.Transpose.ROTATE_90)
    long_side = math.exp(rng.uniform(math.log(LONG_SIDE[0]), math.log(LONG_SIDE[1])))
    scale = long_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size[0] * size[1] > MAX_PIXELS:
        shrink = math.sqrt(MAX_PIXELS / (size[0] * size[1]))
        size = (int(size[0] * shrink), int(size[1] * shrink))
    image = image.resize(size, Image.Resampling.BICUBIC)
    # Grain: an upscaled sample is smoother than a photo of that size, and a JPEG's entropy-coded
    # bytes (most of a draft decode's work) follow the detail. 3-8 levels brings the bytes per
    # pixel near a camera's or a web photo's (about 0.1-0.5).
    pixels = np.asarray(image, dtype=np.float32)
    noise = np.random.default_rng([seed, index]).standard_normal(pixels.shape, dtype=np.float32)
    pixels += noise * rng.uniform(3.0, 8.0)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    quality = rng.choice(QUALITIES)
    progressive = rng.random() < 0.3
    subsampling = 0 if quality >= 90 and rng.random() < 0.5 else 2  # 4:4:4 or 4:2:0
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, progressive=progressive, subsampling=subsampling)
    data = out.getvalue()
    name = f"{index:04d}-{stem}-{size[0]}x{size[1]}-q{quality}.jpg"
    return data, Photo(name, size[0], size[1], len(data), quality, progressive)


def ensure_workload(samples: Path, count: int, seed: int, say: Callable[[str], None]) -> Workload:
    """The cached workload for (recipe version, count, seed, sample photos), made once."""
    from PIL import Image

    sources = sorted(p for p in samples.iterdir() if p.suffix.lower() in SOURCE_SUFFIXES)
    if not sources:
        raise SystemExit(f"{samples}: no sample photos (run `make samples`)")
    key = f"v{WORKLOAD_VERSION}-n{count}-s{seed}-{'-'.join(p.stem for p in sources)}"
    folder = BENCH / f"photos-{key}"
    index = folder / "index.json"
    if index.is_file():
        return Workload(folder, [Photo(**p) for p in json.loads(index.read_text())])
    say(f"making the workload: {count} photos into {folder} (once; cached)")
    folder.mkdir(parents=True, exist_ok=True)
    opened = []
    for path in sources:
        with Image.open(path) as image:
            opened.append((image.convert("RGB"), path.stem))
    photos = []
    for i in range(count):
        data, photo = make_photo(*opened[i % len(opened)], i, seed)
        (folder / photo.name).write_bytes(data)
        photos.append(photo)
    index.write_text(json.dumps([vars(p) for p in photos]))
    return Workload(folder, photos)


@dataclass(frozen=True)
class Manifest:
    path: Path
    photos: list[str]  # photo of each line
    tarpit: frozenset[int]  # line indices pointing at the tarpit


def write_manifest(
    path: Path, workload: Workload, images: int, files_url: str, tarpit_url: str | None, percent: float
) -> Manifest:
    """``images`` lines over the workload's photos, each URL distinct; ``percent`` of them at the tarpit."""
    names = [workload.photos[i % len(workload.photos)].name for i in range(images)]
    count = round(images * percent / 100) if tarpit_url else 0
    tarpit = frozenset(random.Random(images).sample(range(images), count))
    with path.open("w") as out:
        for i, name in enumerate(names):
            out.write(f"{tarpit_url if i in tarpit else files_url}/{name}?n={i}\n")
    return Manifest(path, names, tarpit)


# ============================================================================ server processes


TARPIT_LOG = BENCH / "tarpit-connections.log"


def serve_tarpit() -> None:
    """Accept every connection, read its request line and never answer: a server that hangs its
    clients. Each request's line number (``?n=``) and wall time go to TARPIT_LOG, so that the
    report knows when each tarpit line's fetch started (and so its earliest possible end)."""
    import socket
    import threading

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    print(listener.getsockname()[1], flush=True)
    lock = threading.Lock()

    def hold(connection: socket.socket) -> None:
        connection.settimeout(60)
        try:
            request = connection.recv(4096).decode("latin-1")
        except OSError:
            return
        match = re.search(r"[?&]n=(\d+)", request.partition("\r\n")[0])
        if match:
            with lock, TARPIT_LOG.open("a") as log:
                log.write(f"{time.time():.3f} {match[1]}\n")
        threading.Event().wait()  # never answer; the client's deadline ends it

    while True:
        connection, _ = listener.accept()
        threading.Thread(target=hold, args=(connection,), daemon=True).start()


@dataclass
class Server:
    name: str
    process: subprocess.Popen[str]
    url: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(name: str, command: list[str], port_from: Callable[[str], int | None]) -> Server:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    port = port_from(line)
    if port is None:
        process.kill()
        raise SystemExit(f"{name} did not start: {line!r}")
    return Server(name, process, f"http://127.0.0.1:{port}")


def start_file_server(folder: Path) -> Server:
    """``python -m http.server`` (threading) on 127.0.0.1: its own process, measured from /proc."""

    def port(line: str) -> int | None:
        match = re.search(r"port (\d+)", line)
        return int(match[1]) if match else None

    command = [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1"]
    return start_server("file server", [*command, "--directory", str(folder)], port)


def start_tarpit() -> Server:
    def port(line: str) -> int | None:
        return int(line) if line.strip().isdigit() else None

    return start_server("tarpit", [sys.executable, "-u", str(SCRIPT), "--serve-tarpit"], port)


# ============================================================================ the reference


def measure_decode(model: Path, folder: Path, names: list[str], fidelity: str) -> None:
    """Worker: CPU seconds of decode_image at ``fidelity`` for each photo, and the photos whose
    tensor differs from exact's (none for exact), as JSON on stdout."""
    import numpy as np

    from batchpredict.bundle import resolve_bundle
    from batchpredict.fidelity import Fidelity
    from batchpredict.images import decode_image

    preprocess = resolve_bundle(str(model)).preprocess  # what the engine's spec.preprocess is
    chosen = Fidelity(fidelity)
    photos = {name: (folder / name).read_bytes() for name in names}
    decode_image(photos[names[0]], preprocess, fidelity=chosen)  # first-call set-up out of the figures
    cpu: dict[str, float] = {}
    changed: list[str] = []
    for name, data in photos.items():
        started = time.process_time()
        tensor = decode_image(data, preprocess, fidelity=chosen).tensor
        cpu[name] = time.process_time() - started
        if chosen is not Fidelity.EXACT and not np.array_equal(tensor, decode_image(data, preprocess).tensor):
            changed.append(name)
    print(json.dumps({"cpu": cpu, "changed": changed}))


def measure_inference(model: Path, folder: Path, names: list[str], seconds: float) -> None:
    """Worker: process CPU seconds per image of the 1-thread engine at batch REFERENCE_BATCH."""
    import numpy as np

    from batchpredict.bundle import resolve_bundle
    from batchpredict.images import decode_image
    from batchpredict.model import load_model

    engine = load_model(resolve_bundle(str(model)), REFERENCE_BATCH, 1)
    tensors = [decode_image((folder / n).read_bytes(), engine.spec.preprocess).tensor for n in names]
    batch = np.stack([tensors[i % len(tensors)] for i in range(REFERENCE_BATCH)])
    for _ in range(2):
        engine.probabilities(batch)
    calls: list[float] = []
    wall = time.perf_counter()
    while len(calls) < 3 or time.perf_counter() - wall < seconds:
        started = time.process_time()
        engine.probabilities(batch)
        calls.append(time.process_time() - started)
    elapsed = time.perf_counter() - wall
    per_image = statistics.median(calls) / REFERENCE_BATCH
    print(json.dumps({"per_image": per_image, "calls": len(calls), "cpu_per_wall": sum(calls) / elapsed}))


@dataclass(frozen=True)
class Reference:
    decode: float  # CPU s per image at the fidelity, over the manifest's successful lines
    inference: float  # CPU s per image
    cores: int
    fidelity: str = "exact"
    changed: float = 0.0  # share of the manifest's successful lines whose tensor differs from exact's

    @property
    def per_image(self) -> float:
        return self.decode + self.inference

    @property
    def bound(self) -> float:
        return self.cores / self.per_image


def run_worker(*args: str, env: dict[str, str] | None = None) -> Any:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=os.environ | (env or {}),
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:1])} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_reference(
    args: argparse.Namespace, workload: Workload, manifest: Manifest, cores: int, fidelities: Sequence[str]
) -> dict[str, Reference]:
    """Each fidelity's reference: its own decode CPU; the inference CPU is the one engine's
    (fidelity.engine_for: fast has no engine of its own until one passes the gate)."""
    names = [p.name for p in workload.photos]
    common = ("--model", str(args.model), "--photo-dir", str(workload.folder))
    names_file = BENCH / "reference-photos.json"
    names_file.write_text(json.dumps(names))
    decodes = {
        fidelity: run_worker("--measure-decode", *common, "--names", str(names_file), "--fidelity", fidelity)
        for fidelity in fidelities
    }
    inference = run_worker(
        "--measure-inference",
        *common,
        "--names",
        str(names_file),
        "--seconds",
        str(args.reference_seconds),
        env={"OMP_NUM_THREADS": "1"},
    )
    lines = [name for i, name in enumerate(manifest.photos) if i not in manifest.tarpit]
    references = {}
    for fidelity, decode in decodes.items():
        changed = set(decode["changed"])
        references[fidelity] = Reference(
            statistics.fmean(decode["cpu"][n] for n in lines),
            float(inference["per_image"]),
            cores,
            fidelity,
            sum(n in changed for n in lines) / max(1, len(lines)),
        )
    return references


# ============================================================================ a job leg


@dataclass
class LegSpec:
    label: str
    tree: str  # the repository tree whose functions/ the leg runs
    model: str
    manifest: str
    workers: int
    threads: int | None  # INFERENCE_THREADS (None: the stack's, from the function's memory)
    environment: dict[str, str]
    parameters: dict[str, str]  # SAM template parameters, e.g. WorkBatchSize
    log_dir: str
    out: str
    watch: dict[str, int]  # more processes to measure: name -> pid
    timeout: float
    cpu_slots: bool = True  # the predict workers compute on the machine's cores in turn
    fidelity: str | None = None  # the job's x-amz-meta-fidelity (None: no option, the default)


def client_class() -> Any:
    """The Client of the tree the leg runs: batchpredict.cli.client, or batchpredict.client in
    trees from before the cli package (``--before``)."""
    try:
        return importlib.import_module("batchpredict.cli.client").Client
    except ImportError:
        return importlib.import_module("batchpredict.client").Client


def failed_lines(lines: Iterable[Any]) -> dict[int, str]:
    """Line index -> error code of each failed line; the lines are ResultRecords, or dicts in
    trees from before the typed record (``--before``)."""
    failed = {}
    for line in lines:
        doc = line if isinstance(line, dict) else line.to_json()
        if doc["status"] != "SUCCEEDED":
            failed[int(doc["index"])] = (doc.get("error") or {}).get("code", "?")
    return failed


def job_summary(client: Any, job_id: str) -> dict[str, Any]:
    """The job's _summary.json (its ``compute``: what predict's chunks were billed; its
    ``fidelity``), empty when the tree writes none."""
    for _ in range(50):  # the summary follows the final status within moments
        try:
            return client.summary(job_id)  # type: ignore[no-any-return]
        except AttributeError:
            return {}
        except Exception:
            time.sleep(0.2)
    return {}


def job_options(fidelity: str | None) -> dict[str, Any]:
    """``Client.submit``'s keyword for the job's fidelity (sent as S3 metadata ``fidelity``):
    none without one, so that trees from before the option (``--before``) still submit."""
    if fidelity is None:
        return {}
    from batchpredict.fidelity import Fidelity
    from batchpredict.options import JobOptions

    return {"options": JobOptions(fidelity=Fidelity(fidelity))}


def run_leg(spec: LegSpec) -> None:
    """Worker: the local stack of whichever batchpredict is first on sys.path; one job; JSON out."""
    import dataclasses
    import inspect
    import resource

    from batchpredict.local.provision import LocalOptions
    from batchpredict.local.stack import LocalStack

    threads = {"INFERENCE_THREADS": str(spec.threads)} if spec.threads else {}
    # Trees from before the CPU slots (--before) have no such option: their workers share freely.
    slots = {f.name for f in dataclasses.fields(LocalOptions)} >= {"cpu_slots"}
    options = LocalOptions(
        model_uri=spec.model,
        prefix="bench",
        allowed_networks="127.0.0.1",  # the benchmark's image servers (photos, tarpit)
        predict_workers=spec.workers,
        environment=threads | spec.environment,
        parameters=spec.parameters,
        **({"cpu_slots": spec.cpu_slots} if slots else {}),
    )
    extra = {"serve_api": False} if "serve_api" in inspect.signature(LocalStack).parameters else {}
    started = time.perf_counter()
    stack = LocalStack(options, log_dir=Path(spec.log_dir), warn=lambda m: print(m, file=sys.stderr), **extra)
    ref = stack.start()
    startup = time.perf_counter() - started
    try:
        client = client_class()(ref)
        java = children(os.getpid(), b"DynamoDBLocal")

        def snapshot() -> dict[str, float]:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            cpu = {
                f"workers: {name}": sum(process_cpu(p.pid) or 0.0 for p in pool)
                for name, pool in stack.runner.workers.items()
            }
            cpu["DynamoDB Local"] = sum(process_cpu(pid) or 0.0 for pid in java)
            cpu["leg process"] = usage.ru_utime + usage.ru_stime
            cpu["driver thread"] = time.thread_time()
            for name, pid in spec.watch.items():
                cpu[name] = process_cpu(pid) or 0.0
            cpu["machine"] = machine_busy()
            return cpu

        before = snapshot()
        java_start = before["DynamoDB Local"]  # its start and the provisioning, before the clock
        t0, submitted_at = time.perf_counter(), time.time()
        job_id = client.submit(Path(spec.manifest), **job_options(spec.fidelity))
        while True:
            job = client.jobs.get(job_id)
            if job is not None and job.status.value in FINAL:
                break
            if time.perf_counter() - t0 > spec.timeout:
                raise SystemExit(f"{spec.label}: job {job_id} not done after {spec.timeout:.0f}s: {job}")
            time.sleep(0.2)
        wall = time.perf_counter() - t0
        after = snapshot()
        cpu = {name: after[name] - before[name] for name in after}
        # moto's server threads live in this process, beside the driver (submit + polling).
        cpu["moto server (driver process less its thread)"] = cpu.pop("leg process") - cpu["driver thread"]
        failed = failed_lines(client.result_lines(job_id))
        summary = job_summary(client, job_id)
        result = {
            "compute": summary.get("compute"),
            "fidelity": summary.get("fidelity"),
            "label": spec.label,
            "wall": wall,
            "startup": startup,
            "status": job.status.value,
            "total": job.total,
            "succeeded": job.succeeded,
            "failed": failed,
            "cpu": cpu,
            "replaced": stack.runner.replaced,
            "java_start": java_start,
            "submitted_at": submitted_at,
        }
    finally:
        stack.stop()  # workers finish their invocation and flush their REPORT lines
    Path(spec.out).write_text(json.dumps(result))


@dataclass
class LegResult:
    label: str
    wall: float
    startup: float
    status: str
    total: int
    succeeded: int
    failed: dict[int, str]
    cpu: dict[str, float]
    replaced: int
    java_start: float  # CPU s of DynamoDB Local up to the submit (start, provisioning)
    submitted_at: float = 0.0  # wall-clock time of the upload (time.time())
    compute: dict[str, Any] | None = None  # _summary.json's
    fidelity: str | None = None  # _summary.json's: the fidelity the job ran at
    reports: dict[str, list[Any]] = field(default_factory=dict)  # function -> Report

    @property
    def rate(self) -> float:
        """Successful images per second of wall time, upload -> COMPLETED."""
        return self.succeeded / self.wall

    @property
    def predict_reports(self) -> list[Any]:
        return self.reports.get(PREDICT, [])

    @property
    def gb_s_per_line(self) -> float | None:
        """Predict's billed GB-s (its REPORT lines) per manifest line."""
        reports = self.predict_reports
        return sum(r.gb_seconds for r in reports) / max(1, self.total) if reports else None

    @property
    def memory_mb(self) -> int | None:
        reports = self.predict_reports
        return reports[0].memory_mb if reports else None

    @property
    def summary_gb_s_per_line(self) -> float | None:
        """The same from the job's own _summary.json (the chunks' shares of the billed time)."""
        if not self.compute or not self.total:
            return None
        return float(self.compute.get("predict_gb_seconds") or 0.0) / self.total


def ensure_worktree(ref: str) -> tuple[Path, str]:
    """A detached worktree of ``ref`` under build/bench (made once), DynamoDB Local linked in."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if commit.returncode != 0:
        raise SystemExit(f"--before {ref}: not a commit of this repository")
    sha = commit.stdout.strip()
    tree = BENCH / f"worktree-{re.sub(r'[^A-Za-z0-9._-]', '_', ref)}"
    if not tree.exists():
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), sha],
            check=True,
            capture_output=True,
        )
    head = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if head != sha:
        raise SystemExit(f"{tree} is at {head[:10]}, not {ref} ({sha[:10]}): `git worktree remove {tree}`")
    # The older tree looks for DynamoDB Local (npm) under its own build/.
    link = tree / "build" / "dynamodb-local"
    if not link.exists() and (ROOT / "build" / "dynamodb-local").exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():  # dangling: the tree was linked from a checkout since removed
            link.unlink()
        link.symlink_to(ROOT / "build" / "dynamodb-local")
    return tree, sha


def leg_process(script: Path, spec: dict[str, Any], tree: Path, env: dict[str, str]) -> Any:
    """``script --leg SPEC`` in its own process, in ``tree``: the JSON it writes to ``spec["out"]``
    (also benchmarks/chaos.py's legs)."""
    done = subprocess.run(
        [sys.executable, str(script), "--leg", json.dumps(spec)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not Path(spec["out"]).is_file():
        raise SystemExit(f"{spec['label']}: the job leg failed:\n{done.stderr[-4000:]}")
    return json.loads(Path(spec["out"]).read_text())


def job_leg(spec: LegSpec, say: Callable[[str], None], same_jvm: bool = True) -> LegResult:
    """Run one leg in a subprocess. An older tree gets the current REPORT accounting (report_shim)
    and, unless ``same_jvm`` is off, the current DynamoDB Local JVM flags (``JDK_JAVA_OPTIONS``,
    which the java launcher reads): both legs then pay the same local stack, and their ratio is
    that of the code under test."""
    from batchpredict.local.dynamodb_local import JVM_OPTIONS
    from batchpredict.local.lambda_shim import parse_report

    tree = Path(spec.tree)
    env = dict(os.environ)
    if tree != ROOT:
        paths = [str(tree / "functions"), str(REPORT_SHIM), env.get("PYTHONPATH", "")]
        env |= {"PYTHONPATH": os.pathsep.join(p for p in paths if p), "BATCHPREDICT_BENCH_REPORT_SHIM": "1"}
        if same_jvm:
            env["JDK_JAVA_OPTIONS"] = " ".join([*JVM_OPTIONS, env.get("JDK_JAVA_OPTIONS", "")]).strip()
    say(f"  {spec.label}: starting the local stack and running the job")
    raw = leg_process(SCRIPT, vars(spec), tree, env)
    raw["failed"] = {int(k): v for k, v in raw["failed"].items()}
    result = LegResult(**raw)
    for log in Path(spec.log_dir).glob("*.log"):
        lines = log.read_text(errors="replace").splitlines()
        result.reports[log.stem] = [r for r in map(parse_report, lines) if r is not None]
    return result


# ============================================================================ the report


def fmt_range(values: Sequence[float], digits: int = 1) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.median(values):.{digits}f} (range {min(values):.{digits}f}-{max(values):.{digits}f})"


def print_cpu(result: LegResult, reference: Reference) -> None:
    cpu = dict(result.cpu)
    machine = cpu.pop("machine")
    n = max(1, result.succeeded)
    rows = sorted(cpu.items(), key=lambda kv: -kv[1])
    measured = sum(cpu.values())
    rows.append(("rest of the machine (other processes, kernel)", max(0.0, machine - measured)))
    cores = reference.cores
    print(
        f"  CPU during the job ({result.label}): {machine:.1f} s busy of {result.wall * cores:.1f} s on "
        f"{cores} cores ({machine / (result.wall * cores):.0%})"
    )
    print(f"    {'':<46} {'CPU s':>7} {'ms/image':>9} {'share':>7}")
    for name, seconds in rows:
        print(f"    {name:<46} {seconds:7.1f} {seconds / n * 1000:9.1f} {seconds / machine:7.1%}")
    if result.java_start:
        print(f"    (DynamoDB Local used {result.java_start:.1f} CPU s to start, before the job)")
    predict = cpu.get(f"workers: {PREDICT}", 0.0) / n
    print(
        f"  predict workers' CPU per image {predict * 1000:.1f} ms vs decode + inference "
        f"{reference.per_image * 1000:.1f} ms: {predict / reference.per_image:.2f}x"
    )


def print_cost(result: LegResult, workers: int, cores: int) -> None:
    reports = result.reports.get(PREDICT, [])
    if not reports:
        print(f"  Lambda accounting ({result.label}): no REPORT lines in {PREDICT}.log")
        return
    price = LAMBDA_PRICES["x86_64"]
    lines = result.total or 1
    gb_s = sum(r.gb_seconds for r in reports)
    per_image = gb_s / lines
    cost = (gb_s * price.gb_second + len(reports) * price.request) / lines * 1_000_000
    memory = sorted({r.memory_mb for r in reports})
    billed = sum(r.billed_ms for r in reports) / 1000
    peak = max(r.max_memory_used_mb for r in reports)
    print(
        f"  Lambda accounting ({result.label}), {PREDICT} REPORT lines: {len(reports)} invocations, "
        f"{billed:.1f} s billed at {'/'.join(map(str, memory))} MB (the template's PredictMemorySize; "
        f"max memory used {peak} MB)"
    )
    waited = sum(r.cpu_wait_ms or 0.0 for r in reports) / 1000
    if any(r.cpu_wait_ms is not None for r in reports):
        print(
            f"    (durations: each invocation's wall time on {cores} cores shared by {workers} workers, less "
            f"the {waited:.1f} s in all it waited for CPU slots while another computed)"
        )
    else:
        print(
            f"    (durations measured here, {workers} workers on {cores} cores, not on the vCPUs Lambda gives"
            " that memory)"
        )
    print(
        f"    {gb_s:.1f} GB-s, {per_image:.3f} GB-s per manifest line, "
        f"${cost:.2f} per million images ({price.architecture} ${price.gb_second}/GB-s + "
        f"${price.request * 1e6:.2f}/M requests)"
    )
    blog = BLOG_SECONDS_PER_IMAGE * BLOG_MEMORY_GB
    blog_cost = (blog * price.gb_second + price.request) * 1_000_000
    print(
        f"    original AWS blog design: {blog:.2f} GB-s per image ({BLOG_SECONDS_PER_IMAGE} s per request at "
        f"{BLOG_MEMORY_GB} GB), ${blog_cost:.2f} per million: {blog / per_image:.1f}x the GB-s of this job"
    )
    others = {f: rs for f, rs in result.reports.items() if f != PREDICT and rs}
    if others:
        arm = LAMBDA_PRICES["arm64"]
        other_gb_s = sum(r.gb_seconds for rs in others.values() for r in rs)
        invocations = sum(len(rs) for rs in others.values())
        other_cost = (other_gb_s * arm.gb_second + invocations * arm.request) / lines * 1_000_000
        print(
            f"    the other functions ({', '.join(sorted(others))}; arm64): {other_gb_s:.1f} GB-s, "
            f"{invocations} invocations, ${other_cost:.2f} per million images"
        )


def fetch_total_timeout(args: argparse.Namespace) -> float:
    """The per-image deadline the legs ran with: the option, else the function's default."""
    from batchpredict.fetch import FetchLimits

    return float(args.fetch_total_timeout or FetchLimits().total_timeout)


def tarpit_floor(result: LegResult, manifest: Manifest, fetch_total_timeout: float) -> float | None:
    """The earliest the job could complete, in s after the upload: the last tarpit line's first
    request + FETCH_TOTAL_TIMEOUT (the line cannot fail sooner, whatever the design)."""
    if not manifest.tarpit or not TARPIT_LOG.is_file():
        return None
    first: dict[int, float] = {}
    for line in TARPIT_LOG.read_text().splitlines():
        at, n = float(line.split()[0]), int(line.split()[1])
        if at >= result.submitted_at and at <= result.submitted_at + result.wall:
            first[n] = min(first.get(n, at), at)
    if len(first) < len(manifest.tarpit):
        return None
    return max(first.values()) - result.submitted_at + fetch_total_timeout


def print_tarpit(
    results: list[LegResult], manifest: Manifest, peers: list[LegResult], fetch_total_timeout: float
) -> None:
    """Each tarpit run against its clean peer and the tarpit's floor. No design completes the job
    before the last tarpit line's first request + FETCH_TOTAL_TIMEOUT (the measured floor); at
    the peer's pace that request would come when the peer had done the lines before it (the
    peer's floor). The best a design could do is the later of the peer's time for the rest and
    the peer's floor; ``of best`` is the run's rate against that."""
    if not manifest.tarpit:
        return
    last = results[-1]
    codes = Counter(last.failed.get(i, "SUCCEEDED") for i in manifest.tarpit)
    verdict = "all FAILED fetch_timeout" if codes == {"fetch_timeout": len(manifest.tarpit)} else "NOT all"
    print(f"  tarpit lines ({last.label}): {len(manifest.tarpit)}, {verdict}: {dict(codes)}")
    total = len(manifest.photos)
    rest, last_line = total - len(manifest.tarpit), max(manifest.tarpit)
    for i, (run, peer) in enumerate(zip(results, peers, strict=False), 1):
        floor = tarpit_floor(run, manifest, fetch_total_timeout)
        peer_rest = peer.wall * rest / total  # the peer's time for as many lines
        peer_floor = peer.wall * last_line / total + fetch_total_timeout
        best = max(peer_rest, peer_floor)
        measured = f"{floor:5.1f} s" if floor is not None else "n/a (the tarpit's log misses lines)"
        print(
            f"  run {i}: last tarpit line {last_line}; floor {measured} (its first request + "
            f"{fetch_total_timeout:g} s), at the peer's pace {peer_floor:5.1f} s; peer's time for the rest "
            f"{peer_rest:5.1f} s; this run {run.wall:5.1f} s: {best / run.wall:.2f}x of best"
        )


@dataclass(frozen=True)
class Leg:
    """One kind of job leg of the run: its label, its tree, its manifest and its predict workers."""

    label: str
    kind: str  # before, clean, compare, current: also the name of its files
    tree: Path
    workers: int
    threads: int | None  # INFERENCE_THREADS set for it (None: the stack's)
    fidelity: str = "exact"  # the job's fidelity, and so the reference it is held against
    option: bool = False  # the fidelity is sent as the job's option (--fidelity given)


def floor_per_line(reference: Reference, memory_mb: int) -> float:
    """The least predict GB-s a line can be billed: memory GB x necessary CPU-s / vCPUs."""
    from batchpredict.costs import floor_gb_seconds

    return floor_gb_seconds(memory_mb, reference.per_image)


def summary_per_million(result: LegResult) -> float | None:
    """_summary.json's estimated $ per million images (predict compute and requests, SQS,
    DynamoDB writes, S3 requests; split and finalize not included)."""
    value = (result.compute or {}).get("estimated_usd_per_million_images")
    return float(value) if value is not None else None


def print_billing(
    plan: list[Leg], legs: dict[str, list[LegResult]], references: dict[str, Reference]
) -> None:
    """Predict's billed GB-s per line (REPORT lines, and _summary.json's), against the floor of
    the leg's fidelity, images/s against its bound and _summary.json's $ per million, leg by
    leg; then the GB-s of each worker count against the first's (the estimate must not depend
    on the machine's co-tenants) and each fidelity against the first's."""
    width = max(38, *(len(leg.label) + 7 for leg in plan))
    print("\npredict's billing (GB-s per manifest line) against the floor and images/s against the bound:")
    print(
        f"  {'leg':<{width}} {'REPORT':>7} {'summary':>8} {'floor':>7} {'/floor':>7} {'img/s':>7} "
        f"{'/bound':>7} {'$/M (summary)':>13}"
    )
    for leg in plan:
        reference = references[leg.fidelity]
        rows: list[tuple[float, float, float, float, float | None]] = []
        for i, r in enumerate(legs[leg.label], 1):
            gb_s, summary = r.gb_s_per_line, r.summary_gb_s_per_line
            if gb_s is None or r.memory_mb is None:
                print(f"  {leg.label:<{width}} run {i}: no REPORT lines")
                continue
            floor = floor_per_line(reference, r.memory_mb)
            per_million = summary_per_million(r)
            rows.append((gb_s, gb_s / floor, r.rate, r.rate / reference.bound, per_million))
            shown = f"{summary:8.4f}" if summary is not None else f"{'-':>8}"
            print(
                f"  {f'{leg.label} run {i}':<{width}} {gb_s:7.4f} {shown} {floor:7.4f} {gb_s / floor:6.2f}x "
                f"{r.rate:7.1f} {r.rate / reference.bound:6.2f}x {per_million or '-':>13}"
            )
        if rows:
            gb_s_all, floors, rates, bounds, dollars_all = zip(*rows, strict=True)
            dollars = [d for d in dollars_all if d is not None]
            print(
                f"  {leg.label}: GB-s per line {fmt_range(gb_s_all, 4)}, {fmt_range(floors, 2)}x the floor; "
                f"{fmt_range(rates)} images/s, {fmt_range(bounds, 2)}x the bound"
                + (f"; ${fmt_range(dollars, 2)} per million (summary)" if dollars else "")
            )
    current = [leg for leg in plan if leg.kind == "current"]
    for fidelity in dict.fromkeys(leg.fidelity for leg in current):
        same = [leg for leg in current if leg.fidelity == fidelity]
        for leg in same[1:]:
            what = f"{leg.workers} workers / {same[0].workers}" + (f" ({fidelity})" if leg.option else "")
            print(f"  invariance: {what}: GB-s per line {compare(legs[same[0].label], legs[leg.label])}")
    for workers in dict.fromkeys(leg.workers for leg in current):
        same = [leg for leg in current if leg.workers == workers]
        for leg in same[1:]:
            first, runs = legs[same[0].label], legs[leg.label]
            what = f"{leg.fidelity} / {same[0].fidelity} ({workers} workers)"
            speed = compare(first, runs, lambda r: r.rate)
            print(f"  {what}: GB-s per line {compare(first, runs)}; images/s {speed}")


def compare(
    first: list[LegResult], other: list[LegResult], metric: Callable[[LegResult], float | None] | None = None
) -> str:
    """``other``'s metric (default GB-s per line) against ``first``'s: the ratio of the medians,
    and run by run."""
    get = metric or (lambda r: r.gb_s_per_line)
    pairs = [(a, b) for a, b in zip(map(get, first), map(get, other), strict=False) if a and b]
    if not pairs:
        return "n/a"
    ratio = statistics.median(b for _, b in pairs) / statistics.median(a for a, _ in pairs)
    return f"{ratio:.3f}x (medians; run by run {fmt_range([b / a for a, b in pairs], 3)})"


def print_tarpit_billing(results: list[LegResult], peers: list[LegResult]) -> None:
    """A tarpit run's rest against its clean peer: rate and GB-s per line, run by run."""
    for i, (run, peer) in enumerate(zip(results, peers, strict=False), 1):
        gb_s, peer_gb_s = run.gb_s_per_line, peer.gb_s_per_line
        billing = f"{gb_s:.4f} vs {peer_gb_s:.4f}: {gb_s / peer_gb_s:.2f}x" if gb_s and peer_gb_s else "n/a"
        print(
            f"  run {i}: the rest {run.rate:.1f} vs the clean peer's {peer.rate:.1f} images/s: "
            f"{run.rate / peer.rate:.2f}x; GB-s per line {billing}"
        )


def report(
    args: argparse.Namespace,
    workload: Workload,
    plan: list[Leg],
    manifests: dict[str, Manifest],
    references: dict[str, Reference],
    legs: dict[str, list[LegResult]],
    machine: dict[str, Any],
) -> None:
    cpus = f"{machine['cpus']} CPUs (os.cpu_count {os.cpu_count()})"
    print(f"\nmachine: {machine['cpu']}, {cpus}; load average")
    print(f"  (1/5/15 min) before {machine['load_before']}, after {machine['load_after']}")
    print(f"workload: {workload.describe()}")
    current = [leg for leg in plan if leg.kind == "current"]
    manifest = manifests[current[0].label]
    tarpit = f", {len(manifest.tarpit)} ({args.tarpit_percent:g}%) at a tarpit" if manifest.tarpit else ""
    print(f"manifest: {len(manifest.photos)} lines{tarpit}, every URL distinct")
    if args.compare_images:
        print(f"compare leg: {args.compare_images} lines of the same workload, the current code")
    if args.before:
        jvm = "its own JVM flags" if args.before_own_jvm else "the current JVM flags (JDK_JAVA_OPTIONS)"
        print(f"--before leg: that tree's code; the current REPORT accounting; DynamoDB Local with {jvm}")
    print("reference (fresh processes, this run):")
    for fidelity, reference in references.items():
        print(
            f"  decode CPU per image     {reference.decode * 1000:7.1f} ms  "
            f"(decode_image(data, engine.spec.preprocess, fidelity={fidelity}), mean over the lines)"
        )
        if fidelity != "exact":
            print(
                f"    {fidelity} changes the tensor of {reference.changed:.1%} of the lines "
                "(the rest decode as exact does)"
            )
    reference = next(iter(references.values()))
    print(
        f"  inference CPU per image  {reference.inference * 1000:7.1f} ms  "
        f"(1-thread engine, batch {REFERENCE_BATCH}; every fidelity's engine)"
    )
    for fidelity, reference in references.items():
        print(
            f"  bound ({fidelity}) = {reference.cores} cores / {reference.per_image * 1000:.1f} ms "
            f"= {reference.bound:.1f} images/s"
        )
    what = "successful images/s (the rest)" if manifest.tarpit else "images/s"
    slots = "sharing the cores freely" if args.no_cpu_slots else "computing in turn on the cores (CPU slots)"
    print(f"\njob legs: predict workers {slots}; {what}, upload -> COMPLETED:")
    for leg in plan:
        results = legs[leg.label]
        reference = references[leg.fidelity]
        threads = f" x {leg.threads} inference thread(s)" if leg.threads else ""
        for i, r in enumerate(results, 1):
            replaced = f", {r.replaced} workers replaced" if r.replaced else ""
            print(
                f"  {leg.label:<34} run {i}: {r.rate:7.1f} images/s  {r.rate / reference.bound:5.2f}x bound  "
                f"{r.wall:6.1f} s  {r.status} ({r.succeeded}/{r.total} succeeded; {leg.workers} workers"
                f"{threads}; stack start {r.startup:.1f} s{replaced}; fidelity {r.fidelity or '?'})"
            )
        rates = [r.rate for r in results]
        bound = fmt_range([x / reference.bound for x in rates], 2)
        print(f"  {leg.label:<34} {fmt_range(rates)} images/s, {bound}x bound")
    befores = [leg for leg in plan if leg.kind == "before"]
    for before, after in zip(befores, current, strict=False):
        ratios = [a.rate / b.rate for a, b in zip(legs[after.label], legs[before.label], strict=True)]
        print(f"  {after.label} / {before.label}: {fmt_range(ratios, 2)}x (run by run)")
    print_billing(plan, legs, references)
    peers = {(leg.workers, leg.fidelity): legs[leg.label] for leg in plan if leg.kind == "clean"}
    for leg in plan:
        results = legs[leg.label]
        last = results[-1]
        reference = references[leg.fidelity]
        peer = peers.get((leg.workers, leg.fidelity), [])
        print()
        if leg.kind == "current" and manifests[leg.label].tarpit:
            print_tarpit(results, manifests[leg.label], peer, fetch_total_timeout(args))
            print_tarpit_billing(results, peer)
        print_cpu(last, reference)
        print_cost(last, leg.workers, reference.cores)


# ============================================================================ main


CURRENT = "current (working tree)"
CLEAN_PEER = "current, no tarpit"
COMPARE = "current, --compare-images"


def leg_plan(args: argparse.Namespace, cpus: int) -> list[Leg]:
    """The legs of each run, in order: for each worker count, --before, the clean peer, the
    compare leg, then the current code."""
    plan = []
    before = None
    if args.before:
        tree, sha = ensure_worktree(args.before)
        name = args.before if sha.startswith(args.before) else f"{args.before} {sha[:7]}"
        before = (f"before ({name})", tree)
    option = args.fidelity is not None
    for workers in args.workers:
        for fidelity in args.fidelity or ["exact"]:
            suffix = f", {workers} workers" if len(args.workers) > 1 else ""
            suffix += f", {fidelity}" if option else ""
            if before is not None:
                # Its workers share the cores as they always did: one inference thread per core each.
                threads = max(1, cpus // workers)
                plan.append(Leg(before[0] + suffix, "before", before[1], workers, threads, fidelity, option))
            if args.clean_peer:
                plan.append(Leg(CLEAN_PEER + suffix, "clean", ROOT, workers, args.threads, fidelity, option))
            if args.compare_images:
                plan.append(Leg(COMPARE + suffix, "compare", ROOT, workers, args.threads, fidelity, option))
            plan.append(Leg(CURRENT + suffix, "current", ROOT, workers, args.threads, fidelity, option))
    return plan


def main_parent(args: argparse.Namespace) -> None:
    from batchpredict.model import available_cpus, cpu_info

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    cpus = available_cpus()
    args.workers = args.workers or [cpus]
    machine: dict[str, Any] = {
        "cpu": cpu_info().get("model name", "unknown CPU"),
        "cpus": cpus,
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    BENCH.mkdir(parents=True, exist_ok=True)
    run_dir = BENCH / "runs" / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True)
    workload = ensure_workload(args.samples, args.photos, args.seed, say)
    plan = leg_plan(args, cpus)
    environment = dict(args.env)
    if args.fetch_total_timeout is not None:
        environment["FETCH_TOTAL_TIMEOUT"] = str(args.fetch_total_timeout)
    with servers(workload.folder, args.tarpit_percent > 0) as (files, tarpit):
        manifest = write_manifest(
            run_dir / "bench.txt",
            workload,
            args.images,
            files.url,
            tarpit.url if tarpit else None,
            args.tarpit_percent,
        )
        manifests = {leg.label: manifest for leg in plan}
        for leg in plan:
            if leg.kind == "clean":
                manifests[leg.label] = write_manifest(
                    run_dir / "bench-clean.txt", workload, args.images, files.url, None, 0
                )
            elif leg.kind == "compare":
                manifests[leg.label] = write_manifest(
                    run_dir / "bench-compare.txt", workload, args.compare_images, files.url, None, 0
                )
        say(
            "reference: decode and inference CPU in fresh processes "
            f"({args.reference_seconds:g} s of inference)"
        )
        references = measure_reference(args, workload, manifest, cpus, args.fidelity or ["exact"])
        watch = {"file server": files.process.pid} | ({"tarpit": tarpit.process.pid} if tarpit else {})
        legs: dict[str, list[LegResult]] = {leg.label: [] for leg in plan}
        for run in range(1, args.repeat + 1):
            say(f"run {run} of {args.repeat}")
            for leg in plan:
                name = f"{leg.kind}-w{leg.workers}-{leg.fidelity}-{run}"
                spec = LegSpec(
                    label=leg.label,
                    tree=str(leg.tree),
                    model=str(args.model.resolve()),
                    manifest=str(manifests[leg.label].path),
                    workers=leg.workers,
                    threads=leg.threads,
                    environment=environment,
                    parameters=dict(args.parameter),
                    log_dir=str(run_dir / f"logs-{name}"),
                    out=str(run_dir / f"{name}.json"),
                    watch=watch,
                    timeout=args.timeout,
                    cpu_slots=not args.no_cpu_slots,
                    fidelity=leg.fidelity if leg.option else None,
                )
                legs[leg.label].append(job_leg(spec, say, same_jvm=not args.before_own_jvm))
    machine["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report(args, workload, plan, manifests, references, legs, machine)
    print(f"\nlogs and leg results: {run_dir}")
    short = [
        f"{r.label}: {r.succeeded}/{expected}"
        for rs in legs.values()
        for r in rs
        if r.succeeded != (expected := len(manifests[r.label].photos) - len(manifests[r.label].tarpit))
    ]
    if short:
        raise SystemExit(f"some lines that should have succeeded did not: {short}")


@contextmanager
def servers(folder: Path, with_tarpit: bool) -> Iterator[tuple[Server, Server | None]]:
    files = start_file_server(folder)
    tarpit = None
    TARPIT_LOG.unlink(missing_ok=True)
    try:
        tarpit = start_tarpit() if with_tarpit else None
        yield files, tarpit
    finally:
        files.stop()
        if tarpit is not None:
            tarpit.stop()


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def workload_parser(doc: str | None, images: int) -> tuple[argparse.ArgumentParser, Callable[..., Any]]:
    """A parser with the workload's options (--model, --samples, --images, --photos), and its
    ``add_argument`` (also benchmarks/chaos.py's)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add: Callable[..., Any] = parser.add_argument
    add("--model", type=Path, default=ROOT / "build" / "model" / "efficientnet-lite0", help="model bundle")
    add(
        "--samples",
        type=Path,
        default=ROOT / "build" / "samples",
        help="sample photos the workload is made from",
    )
    add("--images", type=int, default=images, help=f"manifest lines (default {images})")
    add("--photos", type=int, default=300, help="distinct photos of the workload (default 300)")
    return parser, add


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser, add = workload_parser(__doc__, images=1000)
    add("--seed", type=int, default=0, help="of the workload (default 0)")
    add(
        "--workers",
        type=int,
        nargs="+",
        default=None,
        help="predict workers; several counts run a leg of each, to compare the GB-s (default: one per core)",
    )
    add(
        "--threads",
        type=int,
        default=None,
        help="INFERENCE_THREADS of the current code's legs (default: the stack's, as many as the "
        "function's memory buys vCPUs)",
    )
    add(
        "--no-cpu-slots",
        action="store_true",
        help="the current code's predict workers share the cores freely (and bill their wall time)",
    )
    add(
        "--fidelity",
        nargs="+",
        choices=FIDELITIES,
        default=None,
        help="the job's fidelity, sent as its option (S3 metadata fidelity); several run a leg of each, "
        "each against its own bound and floor (default: no option, the job's exact)",
    )
    add("--repeat", type=int, default=1, help="runs of the job legs (default 1)")
    add(
        "--clean-peer",
        action="store_true",
        help="with --tarpit-percent: also run the current code on the same lines with no tarpit, "
        "right before each tarpit run, and print the ratio of the two rates",
    )
    add("--before", metavar="REF", help="also run the job on this git ref's code, before each current run")
    add(
        "--before-own-jvm",
        action="store_true",
        help="start the --before leg's DynamoDB Local with that tree's JVM flags, not the current ones",
    )
    add("--tarpit-percent", type=float, default=0.0, help="lines pointing at a server that never answers")
    add(
        "--compare-images",
        type=int,
        default=None,
        help="also run the current code on a job of this many lines, right before each current run, "
        "and print the ratio of the rates",
    )
    add("--fetch-total-timeout", type=float, default=None, help="FETCH_TOTAL_TIMEOUT of the stack (s)")
    add("--parameter", type=_pair, action="append", default=[], help="template parameter K=V (repeatable)")
    add("--env", type=_pair, action="append", default=[], help="function setting K=V (repeatable)")
    add("--reference-seconds", type=float, default=10.0, help="timed inference of the reference (default 10)")
    add("--timeout", type=float, default=1800.0, help="give up on a job after this many seconds")
    hidden = argparse.SUPPRESS
    add("--leg", help=hidden)
    add("--serve-tarpit", action="store_true", help=hidden)
    add("--measure-decode", action="store_true", help=hidden)
    add("--measure-inference", action="store_true", help=hidden)
    add("--photo-dir", type=Path, help=hidden)
    add("--names", type=Path, help=hidden)
    add("--seconds", type=float, default=10.0, help=hidden)
    args = parser.parse_args(argv)
    if args.images < 1 or args.photos < 1 or args.repeat < 1 or min(args.workers or [1]) < 1:
        parser.error("--images, --photos and --repeat must be >= 1")
    if not 0 <= args.tarpit_percent < 100:
        parser.error("--tarpit-percent must be in [0, 100)")
    if args.clean_peer and not args.tarpit_percent:
        parser.error("--clean-peer needs --tarpit-percent")
    if args.compare_images is not None and (args.compare_images < 1 or args.before or args.clean_peer):
        parser.error("--compare-images needs a positive count and goes without --before and --clean-peer")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.leg:
        run_leg(LegSpec(**json.loads(args.leg)))
    elif args.serve_tarpit:
        serve_tarpit()
    elif args.measure_decode or args.measure_inference:
        names = json.loads(args.names.read_text())
        if args.measure_decode:
            measure_decode(args.model, args.photo_dir, names, (args.fidelity or ["exact"])[0])
        else:
            measure_inference(args.model, args.photo_dir, names[:REFERENCE_BATCH], args.seconds)
    else:
        main_parent(args)


if __name__ == "__main__":
    main()
