"""Images/s of the MXNet engine against ONNX Runtime on the same model, on this machine.

Usage::

    python benchmarks/model_throughput.py --model build/model/efficientnet-lite0 \\
        --samples build/samples [--batches 1,8,16,32] [--threads 1,2] [--seconds 3]

Runtimes: MXNet fp32 (the engine), MXNet int8 (the bundle's int8 variant, when it has one:
``bundlebuild.int8``), ONNX Runtime fp32 and ONNX Runtime int8 (its own static quantization
of the same exported graph, calibrated on the samples, when its quantizer runs here: it
needs an onnx newer than the one MXNet's exporter is pinned to, so the run says why not).

Each (runtime, threads) pair gets its own fresh worker process of this script: OpenMP
fixes its thread count when mxnet is imported. The ONNX model is exported from the
bundle's own symbol and params with ``mx.onnx.export_model``; both runtimes are fed the
sample photos (tiled up to the batch size) and must agree on the top-5, so the
comparison is like for like. The parent process never imports mxnet.

On a shared machine the speed of the CPUs drifts by 2x within seconds, so the parent
never runs two measurements at once (except the deliberate concurrency rows) and splits
each measurement into ``--rounds`` windows, alternating the runtimes window by window, so
both see the same noise. It reports images/s from the median call over all windows and
from the median call of the best window (an estimate of the idle machine).

Environment knobs (``MXNET_SUBGRAPH_BACKEND``, ``OMP_PROC_BIND``, ...) pass through to
the workers, except ``OMP_NUM_THREADS``, which each worker sets to its thread count.
``--mxnet-env NAME=VALUE[,NAME=VALUE...]`` (repeatable) adds an MXNet worker with those
variables to the same alternation, so a knob is compared against the default in one run:
``--mxnet-env DNNL_MAX_CPU_ISA=ALL`` is the engine without its AVX2 cap on AMD Zen 3/4. The
2-thread layout for a process alone on its vCPUs (``batchpredict.model.HOT_THREADS``) gets
its own row unless ``--no-hot-threads``.

The header names the CPU (oneDNN and ONNX Runtime pick their kernels by its instruction
sets, so figures from different hosts differ), and every row shows the load average seen
at its windows and its workers' CPU/wall ratio (below 1.0 per thread: the process waited
for a CPU, another one was running).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from batchpredict.bundle import BundleSpec, resolve_bundle
from batchpredict.images import decode_image
from batchpredict.model import (
    DEFAULT_TOP_K,
    FP32,
    HOT_THREADS,
    INT8,
    Agreement,
    cpu_info,
    int8_variant,
    load_model,
    onednn_isa_cap,
    softmax,
)

MXNET = "mxnet"
MXNET_INT8 = "mxnet-int8"
ORT = "onnxruntime"
ORT_INT8 = "onnxruntime-int8"
RUNTIMES = (MXNET, MXNET_INT8, ORT, ORT_INT8)
INT8_OF = {MXNET_INT8: MXNET, ORT_INT8: ORT}  # an int8 runtime's fp32 peer
SCRIPT = str(Path(__file__).resolve())
SAMPLE_SUFFIXES = (".jpg", ".jpeg", ".png")
WARMUP_CALLS = 2
MIN_TIMED_CALLS = 2

Array = npt.NDArray[np.float32]
Forward = Callable[[Array], Array]


@dataclass(frozen=True)
class Runtime:
    """A runtime as a worker runs it: its kind and any environment variables of its own."""

    kind: str
    env: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        return " ".join([self.kind, *(f"{k}={v}" for k, v in self.env)])


@dataclass(frozen=True)
class Window:
    """One timed loop of forward calls on a single batch size."""

    batch: int
    calls: list[float]  # seconds per forward call
    elapsed: float
    cpu: float = 0.0  # CPU seconds the worker process used over the window

    @property
    def rate(self) -> float:
        """Images/s over the whole window."""
        return self.batch * len(self.calls) / self.elapsed


@dataclass
class Samples:
    """Call times gathered over several windows of the same batch size."""

    batch: int
    calls: list[float] = field(default_factory=list)
    window_rates: list[float] = field(default_factory=list)  # images/s of each window's median call
    loads: list[float] = field(default_factory=list)  # 1-minute load average as each window began
    cpu: float = 0.0
    elapsed: float = 0.0

    def add(self, window: Window, load: float) -> None:
        self.calls.extend(window.calls)
        self.window_rates.append(window.batch / statistics.median(window.calls))
        self.loads.append(load)
        self.cpu += window.cpu
        self.elapsed += window.elapsed

    @property
    def cpu_share(self) -> float:
        """CPU seconds per wall second over the windows."""
        return self.cpu / self.elapsed if self.elapsed else 0.0

    @property
    def rate(self) -> float:
        """Images/s from the median call: robust to a noisy neighbour."""
        return self.batch / statistics.median(self.calls)


# ---------------------------------------------------------------------------- worker side


def mxnet_forward(spec: BundleSpec, threads: int, max_batch: int, precision: str = FP32) -> Forward:
    engine = load_model(spec, max_batch=max_batch, threads=threads, precision=precision)
    return engine.probabilities


def ort_forward(onnx_file: Path, threads: int) -> Forward:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def forward(batch: Array) -> Array:
        return softmax(session.run(None, {input_name: batch})[0])

    return forward


def export_onnx(spec: BundleSpec, out: Path) -> None:
    """Export the bundle to ONNX with a dynamic batch axis; weights become true constants."""
    import mxnet as mx
    import onnx

    mx.onnx.export_model(
        str(spec.symbol_file),
        str(spec.params_file),
        [(1, *spec.input_shape)],
        np.float32,
        str(out),
        dynamic=True,
        dynamic_input_shapes=[(None, *spec.input_shape)],
    )
    # The exporter also lists every weight as a graph input, which stops ORT from constant
    # folding (e.g. batch norm into the convolution). Drop them so ORT optimises fully.
    model = onnx.load(str(out))
    weights = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def int8_onnx(onnx_file: Path) -> Path:
    return onnx_file.with_name(f"{onnx_file.stem}-int8.onnx")


def quantize_onnx(onnx_file: Path, samples: Array) -> str | None:
    """ONNX Runtime's static int8 quantization (QDQ, per-channel weights) of the exported graph,
    calibrated on the samples; the reason it did not run, or None."""
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    except Exception as exc:  # any failure to import means it does not run here
        return f"{type(exc).__name__}: {exc}"

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = iter([{"data": samples[i : i + 1]} for i in range(len(samples))])

        def get_next(self) -> dict[str, Array] | None:
            return next(self.batches, None)

    try:
        quantize_static(
            str(onnx_file),
            str(int8_onnx(onnx_file)),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def tile(samples: Array, batch: int) -> Array:
    reps = -(-batch // len(samples))
    return np.ascontiguousarray(np.concatenate([samples] * reps)[:batch])


def measure(forward: Forward, batch: Array, seconds: float) -> Window:
    forward(batch)  # back in cache after the other runtime's window
    calls: list[float] = []
    cpu = time.process_time()
    start = time.perf_counter()
    while len(calls) < MIN_TIMED_CALLS or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        forward(batch)
        calls.append(time.perf_counter() - t0)
    return Window(len(batch), calls, time.perf_counter() - start, time.process_time() - cpu)


def run_worker(args: argparse.Namespace) -> None:
    """Load and warm up, say ``ready``, then serve ``BATCH SECONDS`` lines on stdin until EOF."""
    spec = resolve_bundle(str(args.model))
    samples: Array = np.load(args.input)
    if args.worker == "export":
        export_onnx(spec, args.onnx)
        why_not = quantize_onnx(args.onnx, samples)
        print(f"ort-int8 {why_not or 'ok'}".splitlines()[0], flush=True)
        return
    batches: list[int] = args.batches
    if args.worker in (MXNET, MXNET_INT8):
        precision = INT8 if args.worker == MXNET_INT8 else FP32
        forward = mxnet_forward(spec, args.worker_threads, max(batches), precision)
    else:
        forward = ort_forward(
            int8_onnx(args.onnx) if args.worker == ORT_INT8 else args.onnx, args.worker_threads
        )
    inputs = {b: tile(samples, b) for b in batches}
    for batch in inputs.values():
        for _ in range(WARMUP_CALLS):
            forward(batch)
    if args.probs_out:
        np.save(args.probs_out, forward(samples))
    # The oneDNN ISA cap in force (the engine sets its default before importing mxnet).
    isa = os.environ.get("DNNL_MAX_CPU_ISA", "none") if args.worker in (MXNET, MXNET_INT8) else "-"
    print(f"ready {isa}", flush=True)
    for line in sys.stdin:
        batch_size, seconds = line.split()
        window = measure(forward, inputs[int(batch_size)], float(seconds))
        print(json.dumps(vars(window)), flush=True)


# ---------------------------------------------------------------------------- parent side


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[str]
    log: Path

    def _fail(self, what: str) -> RuntimeError:
        self.process.kill()
        self.process.wait()
        return RuntimeError(f"worker {self.name} {what}:\n{self.log.read_text()}")

    def _line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise self._fail("died")
        return line

    def wait_ready(self) -> str:
        """Wait for the worker to load; returns the oneDNN ISA cap it runs under."""
        word, _, isa = self._line().strip().partition(" ")
        if word != "ready":
            raise self._fail("did not get ready")
        return isa

    def request(self, batch: int, seconds: float) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{batch} {seconds}\n")
        self.process.stdin.flush()

    def result(self) -> Window:
        return Window(**json.loads(self._line()))

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        if self.process.wait() != 0:
            raise self._fail(f"exited with {self.process.returncode}")


@dataclass
class Launcher:
    """Starts worker processes of this script that share the exported model and the samples."""

    work: Path
    common: tuple[str, ...]
    started: list[Worker] = field(default_factory=list)

    def start(
        self, runtime: Runtime, threads: int, batches: Sequence[int], probs_out: Path | None = None
    ) -> Worker:
        name = f"{runtime.kind}-{threads}t-{len(self.started)}"
        cmd = [sys.executable, SCRIPT, "--worker", runtime.kind, "--worker-threads", str(threads)]
        cmd += ["--batches", ",".join(map(str, batches)), *self.common]
        if probs_out is not None:
            cmd += ["--probs-out", str(probs_out)]
        log = self.work / f"{name}.log"
        env = {**os.environ, **dict(runtime.env), "OMP_NUM_THREADS": str(threads)}
        with log.open("w") as stderr:  # the child keeps its own handle
            process = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env
            )
        worker = Worker(name, process, log)
        self.started.append(worker)
        return worker

    def close(self) -> None:
        """Let the running workers exit and check that they did so cleanly."""
        for worker in self.started:
            if worker.process.poll() is None:
                worker.close()

    def kill(self) -> None:
        for worker in self.started:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()


def run_alone(worker: Worker, batch: int, seconds: float) -> Window:
    worker.request(batch, seconds)
    return worker.result()


def run_together(workers: Sequence[Worker], batch: int, seconds: float) -> list[Window]:
    for worker in workers:
        worker.request(batch, seconds)
    return [worker.result() for worker in workers]


def load_samples(spec: BundleSpec, folder: Path) -> tuple[list[str], Array]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in SAMPLE_SUFFIXES)
    if not files:
        raise SystemExit(f"{folder}: no sample photos")
    tensors = [decode_image(p.read_bytes(), spec.preprocess).tensor for p in files]
    return [p.name for p in files], np.stack(tensors)


def top_k(probs: Array, k: int = DEFAULT_TOP_K) -> npt.NDArray[np.intp]:
    return np.argsort(-probs, axis=1, kind="stable")[:, :k]


def report_agreement(
    spec: BundleSpec, names: list[str], mx_probs: Array, ort_probs: Array, label: str = "MXNet"
) -> None:
    mx_top, ort_top = top_k(mx_probs), top_k(ort_probs)
    same = [bool((a == b).all()) for a, b in zip(mx_top, ort_top, strict=True)]
    diff = float(np.abs(mx_probs - ort_probs).max())
    print(
        f"top-{DEFAULT_TOP_K} agreement, {label} vs ONNX Runtime: {sum(same)}/{len(same)} photos identical, "
        f"max |p_mxnet - p_ort| = {diff:.2e}"
    )
    for name, ok, best, probs in zip(names, same, mx_top[:, 0], mx_probs, strict=True):
        label = spec.labels[best].text
        print(f"  {name:<16} {'same' if ok else 'DIFFERENT'}  top-1 {label} ({probs[best]:.3f})")


Grid = dict[tuple[Runtime, int, int], Samples]


def measure_grid(
    launcher: Launcher,
    runtimes: Sequence[Runtime],
    batches: Sequence[int],
    threads: Sequence[int],
    rounds: int,
    seconds: float,
) -> tuple[Grid, dict[Runtime, str]]:
    """Every (runtime, threads, batch), alternating the runtimes window by window.

    Also returns the oneDNN ISA cap each runtime's workers ran under.
    """
    workers = {(rt, t): launcher.start(rt, t, batches) for t in threads for rt in runtimes}
    isas = {rt: worker.wait_ready() for (rt, _), worker in workers.items()}
    grid = {(rt, t, b): Samples(b) for rt, t in workers for b in batches}
    for r in range(rounds):
        order = runtimes if r % 2 == 0 else runtimes[::-1]
        for t in threads:
            for b in batches:
                for rt in order:
                    load = os.getloadavg()[0]
                    grid[rt, t, b].add(run_alone(workers[rt, t], b, seconds / rounds), load)
    return grid, isas


def print_grid(
    grid: Grid, runtimes: Sequence[Runtime], threads: Sequence[int], batches: Sequence[int]
) -> None:
    print("\nimages/s, one process per runtime and thread count: median call over all windows, and the")
    print("median call of the best window (the closest this shared machine gets to an idle one);")
    print("cpu/wall: the worker's CPU seconds per second (1.0 per thread when it had its CPUs),")
    print("load: the 1-minute load average as the row's windows began")
    ort = next(rt for rt in runtimes if rt.kind == ORT)
    width = max(len(rt.label) for rt in runtimes)
    print(
        f"{'batch':>5} {'threads':>7}  {'runtime':<{width}} {'median':>8} {'vs ort':>7}"
        f" {'best':>8} {'vs ort':>7} {'cpu/wall':>8} {'load':>10}"
    )
    for t in threads:
        for b in batches:
            base = grid[ort, t, b]
            for rt in runtimes:
                s = grid[rt, t, b]
                best = max(s.window_rates)
                loads = f"{min(s.loads):.1f}-{max(s.loads):.1f}"
                print(
                    f"{b:>5} {t:>7}  {rt.label:<{width}} {s.rate:>8.1f} {s.rate / base.rate:>6.2f}x"
                    f" {best:>8.1f} {best / max(base.window_rates):>6.2f}x {s.cpu_share:>8.2f} {loads:>10}"
                )


def measure_concurrency(launcher: Launcher, batch: int, procs: int, rounds: int, seconds: float) -> None:
    """One ``procs``-thread process alone vs ``procs`` 1-thread processes at the same time."""
    print(
        f"\nbatch {batch}: one {procs}-thread process vs {procs} concurrent 1-thread processes "
        "(aggregate images/s over the same windows, median of the windows)"
    )
    one_head, many_head = f"1 x {procs} threads", f"{procs} x 1 thread"
    print(f"{'runtime':<12} {one_head:>16} {many_head:>15} {'gain':>7}   (best window)")
    for kind in (MXNET, ORT):
        single = launcher.start(Runtime(kind), procs, [batch])
        group = [launcher.start(Runtime(kind), 1, [batch]) for _ in range(procs)]
        for worker in (single, *group):
            worker.wait_ready()
        alone, together = [], []
        for _ in range(rounds):
            alone.append(run_alone(single, batch, seconds / rounds).rate)
            together.append(sum(w.rate for w in run_together(group, batch, seconds / rounds)))
        one, many = statistics.median(alone), statistics.median(together)
        best = f"{max(alone):.1f} vs {max(together):.1f}"
        print(f"{kind:<12} {one:>16.1f} {many:>15.1f} {many / one:>6.2f}x   ({best})")


def export_in_worker(model: Path, onnx_file: Path, samples: Path) -> str:
    """Export the ONNX graph and try ORT's int8 quantization of it: ``ok`` or why it did not run."""
    cmd = [sys.executable, SCRIPT, "--worker", "export", "--model", str(model), "--onnx", str(onnx_file)]
    export = subprocess.run([*cmd, "--input", str(samples)], capture_output=True, text=True, check=False)
    if export.returncode != 0:
        raise SystemExit(f"ONNX export failed:\n{export.stderr}")
    status = next((line for line in export.stdout.splitlines() if line.startswith("ort-int8 ")), "")
    return status.removeprefix("ort-int8 ") or "no answer from the export worker"


def check_agreement(
    launcher: Launcher, spec: BundleSpec, names: list[str], runtimes: Sequence[Runtime], threads: int
) -> None:
    probs = {rt: launcher.work / f"probs-{i}.npy" for i, rt in enumerate(runtimes)}
    for rt in runtimes:
        launcher.start(rt, threads, [len(names)], probs[rt]).wait_ready()
    ort = np.load(next(p for rt, p in probs.items() if rt.kind == ORT))
    for rt in runtimes:
        if rt.kind == MXNET:
            report_agreement(spec, names, np.load(probs[rt]), ort, rt.label)
        elif rt.kind in INT8_OF:
            peer = np.load(next(p for other, p in probs.items() if other.kind == INT8_OF[rt.kind]))
            print(int8_agreement_line(rt.kind, Agreement.between(peer, np.load(probs[rt]))))
    launcher.close()


def int8_agreement_line(kind: str, agreement: Agreement) -> str:
    return (
        f"{kind} vs {INT8_OF[kind]} fp32: top-1 equal on {agreement.top1_equal:.1%} of {agreement.images}, "
        f"top-5 sharing >= 4 on {agreement.top5_share4:.1%}, overlap 0..5: {list(agreement.top5_overlap)}"
    )


def int8_runtimes(spec: BundleSpec, ort_int8: str) -> list[Runtime]:
    """The int8 runtimes that run here; says why a missing one is missing, and what the bundle's
    build measured of its int8 variant's agreement (on far more photos than the samples)."""
    found = []
    variant = int8_variant(spec)
    if variant is None:
        print("MXNet int8: the bundle has no int8 variant (make model builds it: bundlebuild.int8)")
    else:
        a = variant.agreement
        print(
            f"MXNet int8 variant, as its build measured it on {a.images} varied images "
            f"({variant.measured_on}): "
            f"top-1 equal to fp32 on {a.top1_equal:.1%}, top-5 sharing >= 4 on {a.top5_share4:.1%}, "
            f"overlap 0..5: {list(a.top5_overlap)}; gate {'passed' if variant.passes_gate else 'FAILED'}"
        )
        found.append(Runtime(MXNET_INT8))
    if ort_int8 == "ok":
        found.append(Runtime(ORT_INT8))
    else:
        print(f"ONNX Runtime int8: its quantizer does not run here ({ort_int8})")
    return found


def describe_host() -> str:
    """The CPU as kernel choice sees it: oneDNN and ONNX Runtime pick kernels by its instruction sets."""
    info = cpu_info()
    avx512 = "yes" if "avx512f" in info.get("flags", "").split() else "no"
    cap = os.environ.get("DNNL_MAX_CPU_ISA") or onednn_isa_cap(info) or "none"
    return (
        f"CPU {info.get('model name') or platform.processor() or 'unknown'} ({info.get('vendor_id', '?')}, "
        f"family {info.get('cpu family', '?')} model {info.get('model', '?')}), AVX-512 {avx512}; "
        f"oneDNN ISA cap in the engine: {cap}"
    )


def run_parent(args: argparse.Namespace) -> None:
    spec = resolve_bundle(str(args.model))
    names, samples = load_samples(spec, args.samples)
    envs = [*args.mxnet_env, *([tuple(HOT_THREADS.items())] if args.hot_threads else [])]
    runtimes = [Runtime(MXNET), *(Runtime(MXNET, env) for env in envs), Runtime(ORT)]
    print(
        f"model {spec.model_id}, {len(names)} sample photos, {args.seconds:g} s per measurement "
        f"in {args.rounds} alternating windows, {len(os.sched_getaffinity(0))} CPUs visible"
    )
    print(describe_host())
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        np.save(work / "samples.npy", samples)
        ort_int8 = export_in_worker(args.model, work / "model.onnx", work / "samples.npy")
        if args.int8:
            runtimes += int8_runtimes(spec, ort_int8)
        data = ("--input", str(work / "samples.npy"), "--onnx", str(work / "model.onnx"))
        launcher = Launcher(work, ("--model", str(args.model), *data))
        try:
            check_agreement(launcher, spec, names, runtimes, min(args.threads))
            grid, isas = measure_grid(
                launcher, runtimes, args.batches, args.threads, args.rounds, args.seconds
            )
            launcher.close()
            print_grid(grid, runtimes, args.threads, args.batches)
            caps = ", ".join(f"{rt.label}: {isas[rt]}" for rt in runtimes if rt.kind in (MXNET, MXNET_INT8))
            print(f"DNNL_MAX_CPU_ISA in the MXNet workers: {caps}")
            procs = max(args.threads)
            if procs > 1:
                measure_concurrency(launcher, args.concurrent_batch, procs, args.rounds, args.seconds)
                launcher.close()
        finally:
            launcher.kill()
    print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


# ---------------------------------------------------------------------------- command line


def int_list(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,8,16, got {text!r}")
    return values


def env_list(text: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE[,NAME=VALUE...], got {text!r}")
        pairs.append((name.strip(), value.strip()))
    return tuple(pairs)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add: Callable[..., Any] = parser.add_argument
    add("--model", type=Path, required=True, help="model bundle folder")
    add("--samples", type=Path, help="folder of sample photos")
    add("--batches", type=int_list, default=[1, 8, 16, 32], help="default: 1,8,16,32")
    add("--threads", type=int_list, default=[1, 2], help="default: 1,2")
    add("--seconds", type=float, default=3.0, help="timed seconds per measurement (default 3)")
    add("--rounds", type=int, default=5, help="windows each measurement is split into (default 5)")
    add("--concurrent-batch", type=int, default=16, help="batch of the 1 vs N processes rows (default 16)")
    add(
        "--hot-threads",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure MXNet with batchpredict.model.HOT_THREADS, the API's layout (default: yes)",
    )
    add(
        "--int8",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the int8 runtimes that run here (default: yes)",
    )
    add(
        "--mxnet-env",
        type=env_list,
        action="append",
        default=[],
        metavar="NAME=VALUE[,...]",
        help="also run MXNet with these environment variables (repeatable)",
    )
    hidden = argparse.SUPPRESS
    add("--worker", choices=[*RUNTIMES, "export"], help=hidden)
    add("--worker-threads", type=int, default=1, help=hidden)
    add("--input", type=Path, help=hidden)
    add("--onnx", type=Path, help=hidden)
    add("--probs-out", type=Path, help=hidden)
    args = parser.parse_args(argv)
    if args.worker is None and args.samples is None:
        parser.error("--samples is required")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
    else:
        run_parent(args)


if __name__ == "__main__":
    main()
