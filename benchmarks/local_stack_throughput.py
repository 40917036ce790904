"""Images/s of a whole job on the embedded local stack, beside the bare engine on the same machine.

Starts the local stack as `batchpredict local run` does (moto server, DynamoDB Local, worker
processes provisioned from the SAM template; one predict worker per core), runs one job of
N image lines (the sample photos under distinct URLs, served on loopback), and prints the
end-to-end rate and the engine's own rate at the same batch size and thread split.

Usage: python benchmarks/local_stack_throughput.py --model build/model/efficientnet-lite0 \
           --samples build/samples [--images 2000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHOTOS = ("coffee.png", "chelsea.png", "astronaut.png", "rocket.jpg", "china.jpg", "flower.jpg")


def bare_engine(model: Path, samples: Path, threads: int, batch: int, seconds: float = 5.0) -> float:
    """images/s of one engine with ``threads`` OMP threads, in a fresh process (fixed at import)."""
    code = f"""
import time, numpy as np
from batchpredict.bundle import resolve_bundle
from batchpredict.images import decode_image
from batchpredict.model import load_model
engine = load_model(resolve_bundle({str(model)!r}), {batch}, {threads})
photos = [decode_image(open({str(samples)!r} + '/' + p, 'rb').read(), engine.spec.preprocess).tensor
          for p in {PHOTOS!r}]
x = np.stack([photos[i % len(photos)] for i in range({batch})])
engine.probabilities(x)
n, t = 0, time.perf_counter()
while time.perf_counter() - t < {seconds}:
    engine.probabilities(x); n += {batch}
print(n / (time.perf_counter() - t))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--samples", type=Path, required=True)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()

    from batchpredict.client import Client
    from batchpredict.local.provision import LocalOptions
    from batchpredict.local.servers import FileServer
    from batchpredict.local.stack import LocalStack
    from batchpredict.model import available_cpus

    cpus = available_cpus()
    workers = args.workers or cpus
    threads = max(1, cpus // workers)
    options = LocalOptions(
        model_uri=str(args.model.resolve()),
        prefix="bench",
        predict_workers=workers,
        environment={"INFERENCE_THREADS": str(threads)},
    )
    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack(options, log_dir=Path(tmp) / "logs")
        ref = stack.start()
        files = FileServer(args.samples)
        url = files.start()
        try:
            manifest = Path(tmp) / "bench.txt"
            manifest.write_text(
                "".join(f"{url}/{PHOTOS[i % len(PHOTOS)]}?n={i}\n" for i in range(args.images))
            )
            client = Client(ref)
            started = time.perf_counter()
            job_id = client.submit(manifest)
            job = client.watch(job_id, lambda _: None, interval=0.25)
            wall = time.perf_counter() - started
            # Where the CPU went: worker processes per function, DynamoDB Local (Java), and this
            # process (moto server, the photo server, the client).
            cpu = {name: sum(cpu_seconds(p.pid) for p in pool) for name, pool in stack.runner.workers.items()}
            java = [
                p for p in Path("/proc").iterdir() if p.name.isdigit() and b"DynamoDBLocal" in _cmdline(p)
            ]
            cpu["DynamoDB Local"] = sum(cpu_seconds(int(p.name)) for p in java)
            cpu["moto + photo server + client"] = cpu_seconds(os.getpid())
        finally:
            files.stop()
            stack.stop()
    assert job.succeeded == args.images, job
    batch = 32
    engine_one = bare_engine(args.model, args.samples, 1, batch)
    engine_all = bare_engine(args.model, args.samples, cpus, batch)
    rate = args.images / wall
    print(f"job of {args.images} images, {workers} predict workers x {threads} thread(s): {job.status.value}")
    print(f"  end to end (upload -> COMPLETED)      {wall:7.1f} s  {rate:7.1f} images/s")
    print(f"  bare engine, 1 thread, batch {batch}                {engine_one:7.1f} images/s")
    print(f"  bare engine, {cpus} threads, batch {batch}               {engine_all:7.1f} images/s")
    print(f"  end to end / bare engine ({cpus} threads):  {rate / engine_all:.2f}x")
    total_cpu = sum(cpu.values())
    print(f"  CPU seconds during the job: {total_cpu:.0f} of {wall * cpus:.0f} available on {cpus} cores")
    for name, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]):
        print(f"    {name:<32} {seconds:7.1f} s  {seconds / total_cpu:6.1%}")


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


if __name__ == "__main__":
    main()
