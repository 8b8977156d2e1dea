"""What the benchmark steps: parameter shape lists, the cases built from them, the suites."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypedDict

__all__ = [
    "SUITES", "CONFIGS", "Knobs", "BYTES_PER_PARAM", "SIZES", "COUNTS", "COUNT_TOTAL", "SCHEDULE_TOTAL",
    "GPU_SIZES", "Workload", "Case", "split", "gpt2_small_shapes", "resnet50_shapes", "rl_mlp_shapes",
    "build_cases", "format_count",
]

Shape = tuple[int, ...]

#: Suites in the order they run; "all" means every one but "quick" and "gpu".
SUITES = ("quick", "size", "count", "models", "rl", "schedule", "gpu")

class Knobs(TypedDict, total=False):
    """The settings a config changes from PyTorch's defaults (both optimizers take them)."""

    centered: bool
    momentum: float


#: Optimizer settings per config (lr and everything else at PyTorch's defaults).
CONFIGS: dict[str, Knobs] = {
    "plain": {},
    "centered-momentum": {"centered": True, "momentum": 0.9},
}

#: Bytes a step must move per fp32 parameter: plain reads θ, g, v and writes θ, v
#: (5 accesses); centered with momentum reads θ, g, v, ḡ, b and writes θ, v, ḡ, b (9).
BYTES_PER_PARAM = {"plain": 5 * 4, "centered-momentum": 9 * 4}

#: Size sweep: total parameters, each split into 16 equal tensors. 2**25 is the
#: issue's "32M in 16 tensors".
SIZES = (10**3, 10**4, 10**5, 10**6, 10**7, 2**25, 10**8)
QUICK_SIZES = (10**3, 10**4)
SIZE_SWEEP_TENSORS = 16

#: Tensor-count sweep: COUNT_TOTAL parameters (or --max-size, if smaller) in this many tensors.
COUNTS = (1, 16, 100, 1000)
COUNT_TOTAL = 2**25

#: Schedule suite: this many parameters in 16 tensors, lr changed after every step.
SCHEDULE_TOTAL = 2**22

#: GPU suite: these totals in 16 tensors (up to --max-size; a size whose tensors do not fit the
#: device's memory is skipped with the reason, measure.memory_fit), then the ResNet-50 and GPT-2
#: small shapes (last: compiling 150-odd tensors takes longest, and --time-limit drops the last).
GPU_SIZES = (2**20, 2**25, 10**8, 10**9)


def format_count(n: int) -> str:
    """1000 → '1k', 33554432 → '33.6M', 4996 → '5k' (three significant digits)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


@dataclass(frozen=True)
class Workload:
    """A named list of parameter shapes."""

    name: str
    shapes: tuple[Shape, ...]

    @property
    def numel(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    @property
    def tensors(self) -> int:
        return len(self.shapes)


@dataclass(frozen=True)
class Case:
    """One workload under one config, as one suite shows it."""

    suite: str
    workload: Workload
    config: str
    schedule: bool = False  # an ExponentialLR step after every optimizer step

    @property
    def key(self) -> tuple:
        """Cases with equal keys are measured once and shown in every suite that has them."""
        return (self.workload.shapes, self.config, self.schedule)

    @property
    def bytes_per_step(self) -> int:
        return self.workload.numel * BYTES_PER_PARAM[self.config]


def split(total: int, count: int) -> tuple[Shape, ...]:
    """``total`` elements in ``count`` 1-d tensors whose sizes differ by at most one."""
    base, extra = divmod(total, count)
    return tuple((base + (i < extra),) for i in range(count))


def gpt2_small_shapes(vocab: int = 50257, context: int = 1024, width: int = 768,
                      layers: int = 12) -> tuple[Shape, ...]:
    """GPT-2 small's parameters as Hugging Face's GPT2Model holds them (Conv1D
    weights are in × out; the lm_head is tied to the token embedding and not
    counted): 148 tensors, 124,439,808 elements."""
    shapes: list[Shape] = [(vocab, width), (context, width)]  # wte, wpe
    for _ in range(layers):
        shapes += [(width,), (width,)]  # ln_1 weight, bias
        shapes += [(width, 3 * width), (3 * width,)]  # attn.c_attn
        shapes += [(width, width), (width,)]  # attn.c_proj
        shapes += [(width,), (width,)]  # ln_2
        shapes += [(width, 4 * width), (4 * width,)]  # mlp.c_fc
        shapes += [(4 * width, width), (width,)]  # mlp.c_proj
    shapes += [(width,), (width,)]  # ln_f
    return tuple(shapes)


def resnet50_shapes(blocks: tuple[int, ...] = (3, 4, 6, 3), classes: int = 1000) -> tuple[Shape, ...]:
    """torchvision's resnet50 parameters (batch-norm weight and bias, no running
    statistics): 161 tensors, 25,557,032 elements."""
    expansion = 4

    def conv_bn(cin: int, cout: int, k: int) -> list[Shape]:
        return [(cout, cin, k, k), (cout,), (cout,)]  # conv (no bias), bn weight, bn bias

    shapes = conv_bn(3, 64, 7)  # stem: conv1, bn1
    inplanes = 64
    for stage, count in enumerate(blocks):
        width = 64 * 2**stage
        for block in range(count):
            shapes += conv_bn(inplanes, width, 1) + conv_bn(width, width, 3)
            shapes += conv_bn(width, width * expansion, 1)
            if block == 0:  # downsample: 1x1 conv + bn on the shortcut
                shapes += conv_bn(inplanes, width * expansion, 1)
            inplanes = width * expansion
    shapes += [(classes, inplanes), (classes,)]  # fc
    return tuple(shapes)


def rl_mlp_shapes(observations: int = 8, hidden: int = 64, actions: int = 4) -> tuple[Shape, ...]:
    """A 3-layer MLP policy (8 → 64 → 64 → 4, LunarLander-sized): 6 tensors, 4,996 elements."""
    sizes = (observations, hidden, hidden, actions)
    shapes: list[Shape] = []
    for cin, cout in zip(sizes, sizes[1:]):
        shapes += [(cout, cin), (cout,)]
    return tuple(shapes)


def _sweep(total: int, count: int) -> Workload:
    return Workload(f"{format_count(total)} in {count} tensor{'s' if count > 1 else ''}", split(total, count))


def build_cases(suites: list[str], configs: list[str], max_size: float) -> list[Case]:
    """The cases of ``suites`` × ``configs``, in suite order. ``max_size`` caps the
    size, count and GPU sweeps (the model, RL and schedule shapes are fixed)."""
    cases: list[Case] = []
    for suite in SUITES:
        if suite not in suites:
            continue
        for config in configs:
            if suite == "quick":
                cases += [Case("quick", _sweep(n, SIZE_SWEEP_TENSORS), config) for n in QUICK_SIZES]
                cases.append(Case("quick", Workload("RL MLP", rl_mlp_shapes()), config))
            elif suite == "size":
                cases += [Case("size", _sweep(n, SIZE_SWEEP_TENSORS), config) for n in SIZES if n <= max_size]
            elif suite == "count":
                total = int(min(COUNT_TOTAL, max_size))
                cases += [Case("count", _sweep(total, c), config) for c in COUNTS if c <= total]
            elif suite == "models":
                cases.append(Case("models", Workload("GPT-2 small", gpt2_small_shapes()), config))
                cases.append(Case("models", Workload("ResNet-50", resnet50_shapes()), config))
            elif suite == "rl":
                cases.append(Case("rl", Workload("RL MLP", rl_mlp_shapes()), config))
            elif suite == "schedule":
                workload = _sweep(SCHEDULE_TOTAL, SIZE_SWEEP_TENSORS)
                cases.append(Case("schedule", Workload(workload.name + ", ExponentialLR", workload.shapes),
                                  config, schedule=True))
            elif suite == "gpu":
                cases += [Case("gpu", _sweep(n, SIZE_SWEEP_TENSORS), config)
                          for n in GPU_SIZES if n <= max_size]
                cases.append(Case("gpu", Workload("ResNet-50", resnet50_shapes()), config))
                cases.append(Case("gpu", Workload("GPT-2 small", gpt2_small_shapes()), config))
    return cases
