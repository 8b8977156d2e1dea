"""The memory-bandwidth roofline: the best of several independent probes.

A step of RMSProp does almost no arithmetic per byte, so its floor is the time
to move its bytes at the machine's memory bandwidth. The bandwidth is measured
in the same run, never taken from our own compiled code:

- PyTorch's own in-place kernels: ``a.add_(b)`` (reads 2 arrays, writes 1) and
  ``a.addcmul_(b, c)`` (reads 3, writes 1);
- on CPU, a STREAM-style C/OpenMP kernel with a plain step's access pattern
  (reads θ, g, v; writes θ, v) and one with the centered-with-momentum pattern
  (reads 5 arrays, writes 4), built now with ``gcc -O3 -fopenmp -march=native``.

Each probe runs over arrays much larger than the last-level cache and reports
its best repetition (as STREAM does); the roofline is the best probe.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["Probe", "Roofline", "measure_roofline", "stream_probes", "stream_library", "stream_step",
           "torch_probes", "last_level_cache_bytes", "default_probe_numel"]

C_SOURCE = r"""
#include <omp.h>

void probe_set_threads(int n) { omp_set_num_threads(n); }

/* A plain RMSProp step's traffic over `count` tensors of n[k] elements, in one
   parallel region (as a fused step's kernel loops over its tensors): read
   theta, g, v; write theta, v. */
void probe_3r2w(int count, float **th, float **g, float **v, const long *n) {
    #pragma omp parallel
    for (int k = 0; k < count; ++k) {
        float *restrict tk = th[k], *restrict vk = v[k];
        const float *restrict gk = g[k];
        #pragma omp for schedule(static) nowait
        for (long i = 0; i < n[k]; ++i) {
            float gi = gk[i];
            float vi = 0.99f * vk[i] + 0.01f * gi * gi;
            vk[i] = vi;
            tk[i] -= 1e-3f * gi * vi;
        }
    }
}

/* Centered with momentum: read theta, g, v, m, b; write theta, v, m, b. */
void probe_5r4w(int count, float **th, float **g, float **v, float **m, float **b, const long *n) {
    #pragma omp parallel
    for (int k = 0; k < count; ++k) {
        float *restrict tk = th[k], *restrict vk = v[k], *restrict mk = m[k], *restrict bk = b[k];
        const float *restrict gk = g[k];
        #pragma omp for schedule(static) nowait
        for (long i = 0; i < n[k]; ++i) {
            float gi = gk[i];
            float vi = 0.99f * vk[i] + 0.01f * gi * gi;
            float mi = 0.99f * mk[i] + 0.01f * gi;
            float bi = 0.9f * bk[i] + gi * (vi - mi * mi);
            vk[i] = vi;
            mk[i] = mi;
            bk[i] = bi;
            tk[i] -= 1e-3f * bi;
        }
    }
}
"""


@dataclass
class Probe:
    name: str
    bytes_per_element: int
    gbps: float


@dataclass
class Roofline:
    """The best bandwidth found, and every probe that was run."""

    gbps: float
    best: str
    probes: list[Probe]
    numel: int
    notes: list[str] = field(default_factory=list)

    def seconds(self, nbytes: int) -> float:
        """The floor on the time to move ``nbytes`` once."""
        return nbytes / (self.gbps * 1e9)


def last_level_cache_bytes() -> int | None:
    """The largest CPU cache of cpu0 as Linux reports it, or None."""
    root = "/sys/devices/system/cpu/cpu0/cache"
    best = None
    try:
        for entry in os.listdir(root):
            with open(os.path.join(root, entry, "size")) as f:
                text = f.read().strip()
            scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
            size = int(text.rstrip("KMG")) * scale
            best = size if best is None else max(best, size)
    except (OSError, ValueError):
        pass
    return best


def default_probe_numel() -> int:
    """Elements per probe array: at least 2**25 (128 MiB of fp32), and 8× the last-level cache."""
    cache = last_level_cache_bytes() or 0
    return max(2**25, 8 * cache // 4)


def _best_seconds(fn: Callable[[], object], reps: int, sync: Callable[[], None]) -> float:
    fn()  # first call: thread pools, page faults
    sync()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def _sync_for(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def torch_probes(numel: int, reps: int, device: torch.device) -> list[Probe]:
    """Bandwidth of PyTorch's in-place add_ and addcmul_ on fp32 arrays of ``numel``."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    a, b, c = (torch.rand(numel, generator=gen).to(device) for _ in range(3))
    sync = _sync_for(device)
    probes = []
    for name, nbytes, fn in (
        ("torch add_", 12, lambda: a.add_(b, alpha=1e-9)),
        ("torch addcmul_", 16, lambda: a.addcmul_(b, c, value=1e-9)),
    ):
        seconds = _best_seconds(fn, reps, sync)
        probes.append(Probe(name, nbytes, nbytes * numel / seconds / 1e9))
    return probes


@functools.cache
def stream_library() -> ctypes.CDLL:
    """The C/OpenMP kernels of :data:`C_SOURCE`, built once per process with
    ``gcc -O3 -fopenmp -march=native`` (CPU only). Raises RuntimeError when
    they cannot be built."""
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise RuntimeError("no C compiler (gcc) found")
    with tempfile.TemporaryDirectory(prefix="rmsprop-bench-") as directory:
        source = os.path.join(directory, "stream_probe.c")
        library = os.path.join(directory, "stream_probe.so")
        with open(source, "w") as f:
            f.write(C_SOURCE)
        command = [compiler, "-O3", "-fopenmp", "-march=native", "-shared", "-fPIC", source, "-o", library]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"`{' '.join(command[:4])} ...` failed: {done.stderr.strip()[:200]}")
        return ctypes.CDLL(library)  # stays mapped after the file is gone


def stream_step(arrays: list[list[torch.Tensor]]) -> Callable[[], None]:
    """A C loop that moves what a fused fp32 step moves over the same tensor
    sizes: one entry of ``arrays`` per tensor of the step, every entry
    ``[theta, g, v]`` (a plain step's pattern) or every entry ``[theta, g, v,
    m, b]`` (centered with momentum), contiguous float32 tensors of one size
    each, overwritten. Returns the call that runs it once over every entry
    in one parallel region (as a fused step's kernel loops over its tensors),
    on as many threads as PyTorch uses: the reference a fused step's kernels
    are held to in the same round of a benchmark. Raises ValueError for
    other entries."""
    lib = stream_library()
    width = len(arrays[0]) if arrays else 3
    for entry in arrays:
        if len(entry) != width or width not in (3, 5) or any(
                t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu"
                or t.numel() != entry[0].numel() for t in entry):
            raise ValueError("entries must be all 3 or all 5 contiguous float32 CPU tensors of one size each")
    pointers = ctypes.c_void_p * len(arrays)
    columns = [pointers(*(t.data_ptr() for t in column)) for column in zip(*arrays)] or [pointers()] * width
    sizes = (ctypes.c_long * len(arrays))(*(entry[0].numel() for entry in arrays))
    kernel = lib.probe_3r2w if width == 3 else lib.probe_5r4w
    count = ctypes.c_int(len(arrays))

    def run() -> None:
        lib.probe_set_threads(ctypes.c_int(torch.get_num_threads()))
        kernel(count, *columns, sizes)

    run.keep = arrays  # type: ignore[attr-defined]  # the tensors live as long as the loop
    return run


def stream_probes(numel: int, reps: int) -> list[Probe]:
    """The C/OpenMP STREAM-style probes (CPU only): a plain step's and a centered
    momentum step's access pattern, on as many threads as PyTorch uses.
    Raises RuntimeError when they cannot be built."""
    gen = torch.Generator().manual_seed(0)
    arrays = [torch.rand(numel, generator=gen) for _ in range(5)]
    probes = []
    for name, nbytes, fn in (
        ("C/OpenMP 3r2w (plain step pattern)", 20, stream_step([arrays[:3]])),
        ("C/OpenMP 5r4w (centered+momentum pattern)", 36, stream_step([arrays])),
    ):
        seconds = _best_seconds(fn, reps, lambda: None)
        probes.append(Probe(name, nbytes, nbytes * numel / seconds / 1e9))
    del arrays
    return probes


def measure_roofline(device: torch.device, numel: int | None = None, reps: int = 10) -> Roofline:
    """Run every probe that can run here; the roofline is the best of them."""
    numel = numel or default_probe_numel()
    probes = torch_probes(numel, reps, device)
    notes = []
    if device.type == "cpu":
        try:
            probes += stream_probes(numel, reps)
        except (RuntimeError, OSError) as err:
            notes.append(f"C/OpenMP probe skipped: {err}")
    else:
        notes.append("C/OpenMP probe is CPU-only: roofline from PyTorch's kernels")
    best = max(probes, key=lambda p: p.gbps)
    return Roofline(best.gbps, best.name, probes, numel, notes)
