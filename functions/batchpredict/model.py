"""The MXNet inference engine: the only module that imports mxnet.

Loaded once per process (``load_model``), then ``run_inference`` on batches of any size.
Executors are bound lazily per bucket size (powers of two up to ``max_batch``) and
kept, so a call never re-binds. A batch runs as forward passes of bucket sizes, the
largest that fits first (13 images: 8 + 4 + 1), so no pass computes padding: zero-padding
up to one bucket cost up to half the pass (17 images ran as 32, at half the images/s),
while a pass's cost per image hardly depends on its size. Binding goes through MXNet's
oneDNN (MKLDNN) subgraph backend, which fuses conv + batch-norm + ReLU6 (+ residual add)
into single primitives.

On AMD family 19h CPUs (Zen 3 / Zen 4) oneDNN is held to its AVX2 kernels
(``DNNL_MAX_CPU_ISA=AVX2``, unless the variable is already set): on Zen 4, where
AVX-512 is double-pumped, oneDNN 2.4's AVX-512 path picks brgemm kernels in NHWC for
some layers and blocked jit kernels for others, reorders between them (24 reorders, ~9%
of a forward) and was 20-30% slower per image than its AVX2 kernels on this model
(benchmarks/model_throughput.py). Zen 3 has no AVX-512, so there it changes nothing. Intel
CPUs with AVX-512 get the same cap: issue 18 measured it 2-7% faster on a Xeon (family 6
model 167); no Intel CPU was at hand to measure it again.

``precision="int8"`` loads the bundle's int8 variant (oneDNN post-training quantization,
built by ``bundlebuild.int8``; see ``int8_variant``) instead of the fp32 graph. int8 is
never capped: without VNNI oneDNN's int8 kernels sum u8 x s8 pairs in saturating int16,
which on this model cost a third of the top-1 agreement (58% against 76% with VNNI) and
half the speed. The cap is process-wide, so the first engine loaded in a process sets it.

Two threads: under MXNet's threaded engine a 2-thread engine kept about one CPU busy (cpu/wall
0.74-0.99) and ran at about its 1-thread speed. With the ops run in the calling thread and its
OpenMP team spinning between them (``HOT_THREADS``: ``MXNET_ENGINE_TYPE=NaiveEngine``,
``OMP_WAIT_POLICY=ACTIVE``) it used 1.2-2.0 CPUs and ran 1.3-2x faster at batch 8-32, and
1.3-1.6x at batch 1 in three runs of four (README, Benchmarks). A bounded spin
(``GOMP_SPINCOUNT`` 1e6 or 1e7) lost all of it. The price: the spinning thread burns a CPU for
as long as the process is idle (1.00 CPU-s per idle second) and starves anything else on the
cores, so it is not a default: it belongs in the environment of a process alone on its vCPUs
that runs one forward at a time (the predict API's function with 2+ vCPUs), not in the local
stack, whose workers share the cores (local/provision.py copies a function's template
environment to its worker). The variables are read when mxnet is imported.
"""

from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from batchpredict.bundle import BundleSpec, bundle_path
from batchpredict.defaults import DEFAULT_MAX_BATCH as DEFAULT_MAX_BATCH
from batchpredict.defaults import DEFAULT_TOP_K as DEFAULT_TOP_K
from batchpredict.errors import BundleError
from batchpredict.records import Prediction as Prediction  # the engine returns the record's type

FP32 = "fp32"
INT8 = "int8"
PRECISIONS = (FP32, INT8)
# model.json's files.<role> of the int8 variant's graph, and of its weights if they differ from
# fp32's (MXNet's oneDNN quantization keeps the fp32 weights and quantizes them at bind).
INT8_SYMBOL_ROLE = "symbol_int8"
INT8_PARAMS_ROLE = "params_int8"
# The agreement a cheaper engine must keep with the exact one before ``fast`` may use it (issue 18).
# The 2-thread layout for a process alone on its vCPUs (see the module docs).
HOT_THREADS = {"MXNET_ENGINE_TYPE": "NaiveEngine", "OMP_WAIT_POLICY": "ACTIVE"}
GATE_TOP1 = 0.98  # share of images whose top-1 class is the same
GATE_TOP5_SHARE4 = 0.99  # share of images whose top-5 lists share at least 4 classes


@dataclass(frozen=True)
class Agreement:
    """How a variant's predictions agree with the reference's on the same images."""

    images: int
    top1_equal: float
    top5_overlap: tuple[int, ...]  # images whose top-5 lists share 0, 1, ..., 5 classes

    @property
    def top5_share4(self) -> float:
        return sum(self.top5_overlap[4:]) / self.images if self.images else 0.0

    @property
    def passes_gate(self) -> bool:
        return self.images > 0 and self.top1_equal >= GATE_TOP1 and self.top5_share4 >= GATE_TOP5_SHARE4

    @classmethod
    def between(cls, reference: npt.NDArray[np.float32], other: npt.NDArray[np.float32]) -> Agreement:
        """The agreement of ``other``'s probabilities (or logits) with ``reference``'s, row by row."""
        ref5 = np.argsort(-reference, axis=1, kind="stable")[:, :5]
        oth5 = np.argsort(-other, axis=1, kind="stable")[:, :5]
        shared = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ref5, oth5, strict=True)]
        same = float((ref5[:, 0] == oth5[:, 0]).mean()) if shared else 0.0
        return cls(len(shared), same, tuple(int(n) for n in np.bincount(shared, minlength=6)))

    def as_json(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "top1_equal": round(self.top1_equal, 4),
            "top5_share4": round(self.top5_share4, 4),
            "top5_overlap": list(self.top5_overlap),
            "passes_gate": self.passes_gate,
        }


@dataclass(frozen=True)
class Int8Variant:
    """A bundle's int8 graph and what its build measured: model.json ``variants.int8``."""

    symbol_file: Path
    params_file: Path
    agreement: Agreement
    measured_on: str  # the CPU the agreement was measured on: int8 kernels differ by ISA

    @property
    def passes_gate(self) -> bool:
        return self.agreement.passes_gate


def int8_variant(spec: BundleSpec) -> Int8Variant | None:
    """The bundle's int8 variant, or None for a bundle without one (every bundle built before it)."""
    about = spec.raw.get("variants", {}).get(INT8)
    roles = {f.role for f in spec.files}
    if not isinstance(about, dict) or INT8_SYMBOL_ROLE not in roles:
        return None
    agreement = about.get("agreement", {})
    try:
        measured = Agreement(
            int(agreement["images"]),
            float(agreement["top1_equal"]),
            tuple(map(int, agreement["top5_overlap"])),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"model.json variants.int8.agreement is malformed ({exc!r})") from exc
    return Int8Variant(
        symbol_file=bundle_path(spec.root, spec.file(INT8_SYMBOL_ROLE)),
        params_file=bundle_path(spec.root, spec.file(INT8_PARAMS_ROLE))
        if INT8_PARAMS_ROLE in roles
        else spec.params_file,
        agreement=measured,
        measured_on=str(about.get("measured_on", "unknown")),
    )


def available_cpus() -> int:
    """CPUs this process may use: the affinity mask, capped by a cgroup v2 CPU quota."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def cpu_info(text: str | None = None) -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (or in ``text``); empty if unreadable."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor's block is enough
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def onednn_isa_cap(info: dict[str, str] | None = None, precision: str = FP32) -> str | None:
    """The ``DNNL_MAX_CPU_ISA`` the engine sets by default on this CPU (see the module docs)."""
    info = cpu_info() if info is None else info
    if precision == INT8:
        return None  # int8 needs the VNNI kernels the AVX2 cap would take away
    if info.get("vendor_id") == "AuthenticAMD" and info.get("cpu family") == "25":  # 19h: Zen 3, Zen 4
        return "AVX2"
    if info.get("vendor_id") == "GenuineIntel" and "avx512f" in info.get("flags", "").split():
        return "AVX2"  # issue 18's Xeon (family 6 model 167): +2-7% (not measured here: no Intel)
    return None


_MX: Any = None
# What ``Symbol.infer_shape`` returns: the arguments', the outputs' and the auxiliary states' shapes.
Shapes = tuple[list[tuple[int, ...]], list[tuple[int, ...]], list[tuple[int, ...]]]


def _mxnet(threads: int, precision: str = FP32) -> Any:
    """Import mxnet once; OpenMP reads its thread count at import time, so set it first.

    oneDNN reads ``DNNL_MAX_CPU_ISA`` when it first dispatches a kernel, so the cap
    holds as long as nothing in this process ran a oneDNN primitive before.
    """
    global _MX  # noqa: PLW0603 - one import per process, by design
    if _MX is None:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        os.environ.setdefault("MXNET_SUBGRAPH_BACKEND", "MKLDNN")
        os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")
        isa = onednn_isa_cap(precision=precision)
        if isa:
            os.environ.setdefault("DNNL_MAX_CPU_ISA", isa)
        import mxnet

        _MX = mxnet
    return _MX


def bucket_sizes(max_batch: int) -> tuple[int, ...]:
    sizes = {1 << i for i in range(max_batch.bit_length()) if 1 << i <= max_batch}
    return tuple(sorted(sizes | {max_batch}))


def forward_sizes(n: int, buckets: tuple[int, ...]) -> list[int]:
    """The forward passes for ``n`` images: the largest bucket that fits, repeatedly.

    ``buckets`` is ascending and starts at 1 (``bucket_sizes``), so the passes add up to ``n``.
    """
    sizes = []
    while n > 0:
        size = next(b for b in reversed(buckets) if b <= n)
        sizes.append(size)
        n -= size
    return sizes


def softmax(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


class Engine:
    """A bound MXNet model. Not re-entrant: calls are serialised by a lock."""

    def __init__(
        self,
        spec: BundleSpec,
        max_batch: int = DEFAULT_MAX_BATCH,
        threads: int | None = None,
        precision: str = FP32,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.spec = spec
        self.precision = precision
        self.symbol_file, self.params_file = spec.symbol_file, spec.params_file
        if precision == INT8:
            variant = int8_variant(spec)
            if variant is None:
                raise BundleError(f"{spec.root}: the bundle has no int8 variant (model.json variants.int8)")
            self.symbol_file, self.params_file = variant.symbol_file, variant.params_file
        self.max_batch = max_batch
        self.buckets = bucket_sizes(max_batch)
        self._mx = _mxnet(threads or available_cpus(), precision)
        self._ctx = self._mx.cpu()
        self._symbol = self._load_symbol()
        shapes = self._infer_shapes()
        self._check_classes(shapes[1][0])
        self._args, self._aux = self._load_params(shapes)
        self._executors: dict[int, Any] = {}
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self.spec.model_id

    def _load_symbol(self) -> Any:
        mx = self._mx
        try:
            symbol = mx.sym.load(str(self.symbol_file))
        except mx.base.MXNetError as exc:
            raise BundleError(f"{self.symbol_file.name}: not a valid MXNet symbol ({exc})") from exc
        # The int8 graph's output is the quantized head's, under another name.
        name = self.spec.output_name if self.precision == FP32 else None
        if name and symbol.list_outputs() != [name]:
            internals = symbol.get_internals()
            if name not in internals.list_outputs():
                raise BundleError(f"{self.symbol_file.name}: no output named {name!r}")
            symbol = internals[name]
        if self.spec.input_name not in symbol.list_arguments():
            raise BundleError(f"{self.symbol_file.name}: no input named {self.spec.input_name!r}")
        return symbol

    def _input_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.spec.input_shape)

    def _infer_shapes(self) -> Shapes:
        """The symbol's argument, output and auxiliary shapes for one image of the input shape."""
        shape = self._input_shape(1)
        try:
            shapes = self._symbol.infer_shape(**{self.spec.input_name: shape})
        except self._mx.base.MXNetError as exc:
            raise BundleError(
                f"{self.symbol_file.name}: the network takes no input {self.spec.input_name!r} "
                f"of shape {shape} ({str(exc).splitlines()[0]})"
            ) from exc
        if shapes[0] is None:
            raise BundleError(f"{self.symbol_file.name}: cannot infer its shapes from input {shape}")
        return shapes  # type: ignore[no-any-return]

    def _check_classes(self, output_shape: tuple[int, ...]) -> None:
        """One label per class the output scores, or every prediction would be mislabelled
        (or an IndexError past the last label)."""
        spec = self.spec
        output = spec.output_name or self._symbol.list_outputs()[0]
        if len(output_shape) != 2:
            raise BundleError(
                f"{self.symbol_file.name}: output {output!r} has shape {tuple(output_shape)} for one "
                "image, expected (1, classes)"
            )
        if output_shape[1] != len(spec.labels):
            raise BundleError(
                f"{spec.file('labels').name}: {len(spec.labels)} labels, but the model's output {output!r} "
                f"has {output_shape[1]} classes"
            )

    def _load_params(self, shapes: Shapes) -> tuple[dict[str, Any], dict[str, Any]]:
        mx = self._mx
        fname = self.params_file.name
        try:
            saved = mx.nd.load(str(self.params_file))
        except mx.base.MXNetError as exc:
            raise BundleError(f"{fname}: not a valid MXNet params file ({exc})") from exc
        args = {k[4:]: v for k, v in saved.items() if k.startswith("arg:")}
        aux = {k[4:]: v for k, v in saved.items() if k.startswith("aux:")}
        arg_shapes, _, aux_shapes = shapes
        wanted = dict(zip(self._symbol.list_arguments(), arg_shapes, strict=True))
        for pool, names_shapes in (
            (args, wanted),
            (aux, dict(zip(self._symbol.list_auxiliary_states(), aux_shapes, strict=True))),
        ):
            for name, shape in names_shapes.items():
                if name == self.spec.input_name or name.endswith("_label"):
                    continue
                if name not in pool:
                    raise BundleError(f"{fname}: missing parameter {name!r}")
                if tuple(pool[name].shape) != tuple(shape):
                    raise BundleError(
                        f"{fname}: parameter {name!r} has shape {tuple(pool[name].shape)}, "
                        f"the symbol needs {tuple(shape)}"
                    )
        return args, aux

    def _executor(self, bucket: int) -> Any:
        exe = self._executors.get(bucket)
        if exe is None:
            mx = self._mx
            shape = self._input_shape(bucket)
            arg_shapes, _, _ = self._symbol.infer_shape(**{self.spec.input_name: shape})
            bound = {}
            for name, arg_shape in zip(self._symbol.list_arguments(), arg_shapes, strict=True):
                # Parameters are shared by every bucket; inputs and labels are per bucket.
                bound[name] = self._args[name] if name in self._args else mx.nd.zeros(arg_shape, self._ctx)
            exe = self._symbol.bind(self._ctx, args=bound, aux_states=self._aux, grad_req="null")
            self._executors[bucket] = exe
        return exe

    def probabilities(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Class probabilities, shape (n, classes), for a float32 NCHW batch of any size."""
        expected = self.spec.input_shape
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected:
            raise ValueError(f"batch must have shape (n, {', '.join(map(str, expected))}), got {batch.shape}")
        parts, start = [], 0
        for size in forward_sizes(len(batch), self.buckets):
            parts.append(self._forward(batch[start : start + size]))
            start += size
        out = np.concatenate(parts) if parts else np.zeros((0, len(self.spec.labels)), np.float32)
        return softmax(out) if self.spec.output_kind == "logits" else out

    def _forward(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """One forward pass; ``len(batch)`` is one of the buckets."""
        with self._lock:
            exe = self._executor(len(batch))
            exe.arg_dict[self.spec.input_name][:] = batch
            return exe.forward(is_train=False)[0].asnumpy()  # type: ignore[no-any-return]

    def top_k(self, probabilities: npt.NDArray[np.float32], k: int = DEFAULT_TOP_K) -> list[list[Prediction]]:
        k = min(k, probabilities.shape[1])
        results = []
        for row in probabilities:
            best = np.argpartition(-row, k - 1)[:k]
            best = best[np.argsort(-row[best], kind="stable")]
            results.append(
                [
                    Prediction(
                        rank=rank,
                        class_index=int(i),
                        wnid=self.spec.labels[i].wnid,
                        label=self.spec.labels[i].text,
                        probability=float(row[i]),
                    )
                    for rank, i in enumerate(best, start=1)
                ]
            )
        return results

    def run_inference(self, batch: npt.NDArray[np.float32], k: int = DEFAULT_TOP_K) -> list[list[Prediction]]:
        """Top-k predictions for every image of a preprocessed batch: one forward per max_batch."""
        return self.top_k(self.probabilities(batch), k)


def load_model(
    spec: BundleSpec, max_batch: int = DEFAULT_MAX_BATCH, threads: int | None = None, precision: str = FP32
) -> Engine:
    """Bind an engine for a verified bundle (see ``bundle.resolve_bundle``).

    ``precision="int8"`` binds the bundle's int8 variant (BundleError if it has none); whether
    its agreement with fp32 passes the gate is ``int8_variant(spec).passes_gate``: the caller decides.
    """
    if len(spec.labels) == 0:
        raise BundleError(f"{spec.root}: no labels")
    return Engine(spec, max_batch=max_batch, threads=threads, precision=precision)


# --- what a classic checkpoint says about itself (``batchpredict model import``) -------------

PROBABILITY_OPS = frozenset({"SoftmaxOutput", "softmax", "SoftmaxActivation"})
# Input sizes tried, in order, when the symbol does not fix one: the common ImageNet crops.
IMAGE_SIZES = (224, 299, 331, 256, 320, 384, 240, 260, 300, 192, 160, 128)


@dataclass(frozen=True)
class CheckpointFacts:
    """What ``inspect_checkpoint`` found; ``size_from_symbol`` tells whether the symbol fixes
    the input size (a ``__shape__`` attribute) or it is the first size the network accepts."""

    input_name: str
    image_size: int
    size_from_symbol: bool
    output_name: str
    output_op: str
    output_kind: str
    classes: int


def _symbol_input_size(symbol: Any, name: str) -> int | None:
    shape = symbol.attr_dict().get(name, {}).get("__shape__")
    if not shape:
        return None
    dims = [int(d) for d in shape.strip("()[] ").split(",") if d.strip()]
    return dims[-1] if len(dims) == 4 and dims[-1] and dims[-1] == dims[-2] else None


def _output_shape(symbol: Any, name: str, size: int, params: dict[str, Any]) -> tuple[int, ...] | None:
    """The output shape for a (1, 3, size, size) input, or None if the network refuses it
    (a shape error, or parameters saved for another size)."""
    mx = _mxnet(available_cpus())
    try:
        arg_shapes, out_shapes, aux_shapes = symbol.infer_shape(**{name: (1, 3, size, size)})
    except mx.base.MXNetError:
        return None
    names = [*symbol.list_arguments(), *symbol.list_auxiliary_states()]
    for param, shape in zip(names, [*arg_shapes, *aux_shapes], strict=True):
        if param in params and tuple(params[param].shape) != tuple(shape):
            return None
    return tuple(out_shapes[0])


def inspect_checkpoint(
    symbol_file: Path, params_file: Path, input_name: str | None = None, image_size: int | None = None
) -> CheckpointFacts:
    """Input name, input size, output name, kind and class count of a model-zoo checkpoint
    (``NAME-symbol.json`` + ``NAME-0000.params`` with ``arg:``/``aux:`` keys), from the
    symbol and the parameters' shapes. Given values are checked, not guessed."""
    mx = _mxnet(available_cpus())
    try:
        symbol = mx.sym.load(str(symbol_file))
    except mx.base.MXNetError as exc:
        raise BundleError(f"{symbol_file.name}: not a valid MXNet symbol ({exc})") from exc
    try:
        params = {k.split(":", 1)[-1]: v for k, v in mx.nd.load(str(params_file)).items()}
    except mx.base.MXNetError as exc:
        raise BundleError(f"{params_file.name}: not a valid MXNet params file ({exc})") from exc
    outputs = symbol.list_outputs()
    if len(outputs) != 1:
        raise BundleError(f"{symbol_file.name}: {len(outputs)} outputs {outputs}, expected one")
    free = [a for a in symbol.list_arguments() if a not in params and not a.endswith("_label")]
    if input_name is None:
        if len(free) != 1:
            raise BundleError(f"{symbol_file.name}: {free} have no parameters: name the input (--input-name)")
        input_name = free[0]
    elif input_name not in free:
        raise BundleError(f"{symbol_file.name}: no input {input_name!r} (inputs without parameters: {free})")
    fixed = _symbol_input_size(symbol, input_name)
    sizes = [image_size] if image_size else ([fixed] if fixed else list(IMAGE_SIZES))
    for size in sizes:
        shape = _output_shape(symbol, input_name, size, params)
        if shape is not None:
            break
    else:
        tried = ", ".join(map(str, sizes))
        raise BundleError(f"{symbol_file.name}: the network takes no (3, N, N) input with N in {tried}")
    if len(shape) != 2:
        raise BundleError(f"{symbol_file.name}: output {outputs[0]!r} is {shape}, expected (1, classes)")
    graph = json.loads(symbol.tojson())
    op = graph["nodes"][graph["heads"][0][0]]["op"]
    return CheckpointFacts(
        input_name=input_name,
        image_size=size,
        size_from_symbol=fixed is not None and not image_size,
        output_name=outputs[0],
        output_op=op,
        output_kind="probabilities" if op in PROBABILITY_OPS else "logits",
        classes=shape[1],
    )
