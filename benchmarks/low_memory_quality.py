"""Does small state still train? Final loss per state_precision on a fixed task.

    .venv/bin/python benchmarks/low_memory_quality.py [--steps 300] [--seeds 3]
    .venv/bin/python benchmarks/low_memory_quality.py --steps 1000 --only bf16
    .venv/bin/python benchmarks/low_memory_quality.py --outlier --steps 6000

The task: a student MLP (256 → 512 → 256 → 1, tanh; 263k parameters, every
weight matrix quantized under "int8") regresses a fixed random teacher of the
same shape on 2,048 inputs whose 256 features have scales spread over three
decades (10^-2 … 10^1), then is scored on 2,048 held-out inputs. The spread
is what low-precision state can get wrong: a weight row's square averages
then span six decades inside one 256-element block, so a codec with too
little range (a linear map for square_avg, or one scale per tensor) stores
the small ones as 0 or coarsely, and those weights take steps of g/ε.

Fixed hyperparameters: PyTorch's RMSprop form, lr 1e-4 decayed linearly to
0, α 0.99, ε 1e-8, momentum 0.9 (so both code maps are exercised), full
batch, ``--steps`` steps. Each configuration runs ``--seeds`` seeds
(teacher, data and student all seeded); the score is the mean final test
loss, and the state's fidelity the largest |mean log(v / v of fp32 state)|
of a weight matrix over the seeds (:func:`square_avg_bias`).

Rows: fp32 state (the baseline: fp32 parameters, computed in fp32), bf16 state, int8 state, bf16 parameters
with fp32 state and stochastic rounding (against fp32 parameters), the same
bf16 parameters rounded to nearest, and with a Kahan compensation
(``kahan_summation``) under fp32 and under bf16 state; and fp32 parameters
whose forward pass reads them rounded to bf16 (mixed precision's fp32
master weights: the bf16 rows compute with bf16 weights too, so this is
what they can hope for; its bf16 copy is not counted). Beside each: the bytes
per parameter the optimizer keeps (parameters + state + compensation, the
step counters left out) and how far its final weights are from the fp32
run's (:func:`weights_off`). The loss goal is one-sided: at
most 1% (2% for bf16 parameters) above fp32 state's; a lower loss is no
defect. The v bias is shown beside it against :data:`BIAS_GOAL`: int8's
codes are written to be unbiased in v, so a bias there is a broken codec;
bf16 state rounds to nearest by design and shows one (v lags where it
changes by less than half a bfloat16 step) with no effect on the loss here.
Then the teeth: deliberately broken codecs, installed in place of pieces of
:mod:`rmsprop.quant`, must miss: a linear or square-root map for square_avg
on loss, codes rounded to nearest (instead of stochastically) on the v bias
(its loss is *lower* here, so a loss bound alone cannot catch it).

``--outlier`` measures instead what one huge gradient element does to the
rest of its block (:func:`outlier_effect`).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import time
from collections.abc import Iterator

import torch
from torch import Tensor

import rmsprop
from rmsprop import quant
from rmsprop.precision import get_buffer, load

WIDTHS = (256, 512, 256, 1)
SAMPLES = 2048
HYPER = dict(lr=1e-4, alpha=0.99, eps=1e-8, momentum=0.9)
#: The largest |mean log(v / v of fp32 state)| of a weight matrix that a state precision may show.
BIAS_GOAL = 0.05


def _mlp(seed: int, dtype: torch.dtype = torch.float32) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(WIDTHS, WIDTHS[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(WIDTHS) - 2:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers).to(dtype)


def _data(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(1000 + seed)
    scales = torch.logspace(-2, 1, WIDTHS[0])[torch.randperm(WIDTHS[0], generator=g)]
    teacher = _mlp(2000 + seed)
    x = torch.randn(2 * SAMPLES, WIDTHS[0], generator=g) * scales
    with torch.no_grad():
        y = teacher(x / scales)  # the teacher sees normalised inputs; the student must learn the scales
    return x[:SAMPLES], y[:SAMPLES], x[SAMPLES:], y[SAMPLES:]


def train(state_precision: str, *, steps: int, seed: int, param_dtype: torch.dtype = torch.float32,
          stochastic_rounding: bool = False, kahan_summation: bool = False, bf16_forward: bool = False,
          **path: bool) -> tuple[float, rmsprop.RMSprop]:
    """Train one student; its held-out MSE and the optimizer (its state, its
    parameters). ``bf16_forward``: the model computes with its weights
    rounded to bf16, as mixed precision's bf16 copy of fp32 master weights."""
    x, y, x_test, y_test = _data(seed)
    model = _mlp(seed, param_dtype)
    opt = rmsprop.RMSprop(model.parameters(), **HYPER, state_precision=state_precision,
                          stochastic_rounding=stochastic_rounding, rounding_seed=seed,
                          kahan_summation=kahan_summation, **path)

    def forward(inputs: Tensor) -> Tensor:  # float32 arithmetic whatever the parameters' storage
        weights = {name: p.bfloat16().float() if bf16_forward else p.float()
                   for name, p in model.named_parameters()}
        return torch.func.functional_call(model, weights, (inputs,))

    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 - t / steps)
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    with torch.no_grad():
        out = torch.nn.functional.mse_loss(forward(x_test), y_test).item()
    return (out if math.isfinite(out) else math.inf), opt


def square_avg_bias(opt: rmsprop.RMSprop, exact: rmsprop.RMSprop) -> float:
    """How far ``opt``'s square averages read from ``exact``'s (fp32 state,
    the same task and seed): the largest |mean log(v / v_exact)| over the
    weight matrices, 0.1 being v read about 10% off in geometric mean. A
    codec that is biased in v (rounding to nearest sticks where v rises by
    less than half a code step per step) shows here even where the loss
    does not."""
    biases = []
    for p, q in zip(opt.param_groups[0]["params"], exact.param_groups[0]["params"]):
        if p.dim() == 2:
            v = load(get_buffer(opt.state[p], "square_avg"), torch.float64)
            w = load(get_buffer(exact.state[q], "square_avg"), torch.float64)
            biases.append(abs((v.log() - w.log()).mean().item()))
    return max(biases)


def bytes_per_param(opt: rmsprop.RMSprop) -> float:
    """What the optimizer keeps per parameter: the parameters, every state
    tensor (8-bit codes and scales, a Kahan compensation) but the step counts."""
    params = [p for group in opt.param_groups for p in group["params"]]
    kept = sum(p.numel() * p.element_size() for p in params)
    kept += sum(v.numel() * v.element_size() for p in params for k, v in opt.state[p].items() if k != "step")
    return kept / sum(p.numel() for p in params)


def weights_off(opt: rmsprop.RMSprop | None, exact: rmsprop.RMSprop, seed: int) -> float:
    """How far ``opt``'s final weights are from ``exact``'s (fp32 parameters
    and state, the same task and seed), as a share of how far training moved
    those: ‖θ − θ_fp32‖ / ‖θ_fp32 − θ₀‖ over every parameter. A bf16 weight
    is off by up to half its step anyway: ``opt=None`` measures that floor,
    the fp32 weights rounded to bf16; what grows beyond it is updates lost
    (rounding to nearest) or their noise (stochastic rounding)."""
    start = [p.detach().double() for p in _mlp(seed).parameters()]
    theirs = [p.detach().double() for p in exact.param_groups[0]["params"]]
    ours = ([p.detach().bfloat16().double() for p in exact.param_groups[0]["params"]] if opt is None
            else [p.detach().double() for p in opt.param_groups[0]["params"]])
    off = sum(((a - b) ** 2).sum() for a, b in zip(ours, theirs))
    moved = sum(((b - s) ** 2).sum() for b, s in zip(theirs, start))
    return math.sqrt(float(off) / float(moved))


# ----------------------------------------------------------------- broken codecs
# Each replaces one piece of rmsprop.quant for the eager paths (the fused
# path's compiled code would keep the real codec).
_ENCODE = quant.encode
BROKEN: dict[str, dict[str, object]] = {
    # y = c/253: every v below absmax/253 reads back as absmax/253 or 0, so those weights barely move
    "linear map for square_avg": {"_U_POWER": 1},
    "square-root map for square_avg": {"_U_POWER": 2},  # y = (c/253)²: reaches down to 1.6e-5 only
    "one scale per tensor": {"_pieces": lambda n: [(0, n, n)]},  # a single block
    "round to nearest": {"encode": lambda x, signed, rounding=None: _ENCODE(x, signed)},
}


@contextlib.contextmanager
def broken_codec(name: str) -> Iterator[None]:
    saved = {key: getattr(quant, key) for key in BROKEN[name]}
    for key, value in BROKEN[name].items():
        setattr(quant, key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(quant, key, value)


# ----------------------------------------------------------------- one outlier in a block
def outlier_effect(spike: float, *, steps: int, alpha: float = 0.99, at: int = 10, numel: int = 4096,
                   seed: int = 0, **knobs: object) -> list[float]:
    """How one huge gradient element moves the rest of its int8 block.

    Two optimizers (fp32 state, int8 state; lr 1e-3, ``alpha``, ε 1e-8) see
    the same standard normal gradients for a tensor of ``numel`` elements,
    except that element 0 is ``spike`` at step ``at``. Returns, for each
    step from the spike on, how far the other 255 elements of its block
    moved with int8 state, as a multiple of how far they moved with fp32
    state (1.0: unaffected). ``knobs`` go to both optimizers.
    """
    gen = torch.Generator().manual_seed(seed)
    start = torch.randn(numel, generator=gen)
    params = [torch.nn.Parameter(start.clone()) for _ in range(2)]
    opts = [rmsprop.RMSprop([p], lr=1e-3, alpha=alpha, eps=1e-8, state_precision=precision, foreach=True,
                            **knobs) for p, precision in zip(params, ("fp32", "int8"))]
    ratios = []
    for t in range(at + steps):
        grad = torch.randn(numel, generator=gen)
        grad[0] = spike if t == at else grad[0]
        before = [p.detach()[1: quant.BLOCK].clone() for p in params]
        for p, opt in zip(params, opts):
            p.grad = grad.clone()
            opt.step()
        if t >= at:
            moved = [(p.detach()[1: quant.BLOCK] - b).abs().sum().item() for p, b in zip(params, before)]
            ratios.append(moved[1] / moved[0])
    return ratios


def _outlier_report(steps: int) -> None:
    print(f"one gradient element of `spike` at step 10 (α = 0.99), then {steps} steps: how far the other "
          "255 elements of its block move with int8 state, as a multiple of their move with fp32 state")
    print(f"{'':9s}{'spike':>8s} {'its v':>8s} {'steps < 0.5x':>13s} {'steps > 2x':>11s} "
          f"{'last outside':>13s} {'min':>8s} {'max':>8s}")
    for name, knobs in (("plain", {}), ("centered", {"centered": True})):
        for spike in (1e5, 1e10, 1e15, 1e20, 1e25):
            r = outlier_effect(spike, steps=steps, **knobs)
            last = max((i for i, x in enumerate(r) if not 0.5 <= x <= 2), default=-1)
            v = (1 - 0.99) * spike**2  # as float32 holds it
            v = v if v <= torch.finfo(torch.float32).max else math.inf
            print(f"{name:9s}{spike:8.0e} {v:8.0e} {sum(x < 0.5 for x in r):13d} "
                  f"{sum(x > 2 for x in r):11d} {last:13d} {min(r):8.1e} {max(r):8.2g}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", default="", help="run only the rows whose label contains this")
    parser.add_argument("--outlier", action="store_true",
                        help="instead: how one huge gradient element moves the rest of its block")
    args = parser.parse_args()
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    if args.outlier:
        _outlier_report(args.steps)
        return
    n, seeds = args.steps, range(args.seeds)
    print(f"teacher-student {'-'.join(map(str, WIDTHS))}, {n} steps, {args.seeds} seeds, {HYPER}; "
          f"torch {torch.__version__}")
    start = time.perf_counter()
    exact = [train("fp32", steps=n, seed=s) for s in seeds]
    base = statistics.fmean(loss for loss, _ in exact)
    print(f"{'':38s} {'loss':>7s}  {'vs fp32':>8s}  {'v bias':>6s}  {'B/param':>7s}  {'θ off':>6s}")
    print(f"{'fp32 state (baseline), fp32 params':38s} {base:.5f}  {'':8s}  {'':6s}  "
          f"{bytes_per_param(exact[0][1]):7.2f}")
    floor = statistics.fmean(weights_off(None, ref, s) for (_, ref), s in zip(exact, seeds))
    print(f"{'  its weights rounded to bf16 (floor)':38s} {'':7s}  {'':8s}  {'':6s}  {'':7s}  {floor:6.3f}")

    def row(label: str, goal: float, precision: str, **kwargs) -> None:
        if args.only not in label:
            return
        runs = [train(precision, steps=n, seed=s, **kwargs) for s in seeds]
        loss = statistics.fmean(loss for loss, _ in runs)
        bias = max(square_avg_bias(opt, ref) for (_, opt), (_, ref) in zip(runs, exact))
        off = statistics.fmean(weights_off(opt, ref, s) for (_, opt), (_, ref), s in zip(runs, exact, seeds))
        rel = (loss - base) / base
        loss_verdict = "meets" if rel <= goal else "misses"
        v_verdict = "within" if bias <= BIAS_GOAL else "off by more than"
        print(f"{label:38s} {loss:.5f}  {rel:+8.2%}  {bias:6.3f}  {bytes_per_param(runs[0][1]):7.2f}  "
              f"{off:6.3f}  loss {loss_verdict} ≤ {goal:+.0%}, v {v_verdict} {BIAS_GOAL}", flush=True)

    row("bf16 state", 0.01, "bf16")
    row("int8 state", 0.01, "int8")
    bf16 = dict(param_dtype=torch.bfloat16)
    row("fp32 master weights, bf16 forward", 0.02, "fp32", bf16_forward=True)
    row("bf16 params, stochastic rounding", 0.02, "fp32", stochastic_rounding=True, **bf16)
    row("bf16 params, round to nearest", 0.02, "fp32", **bf16)
    row("bf16 params, Kahan (fp32 state)", 0.02, "fp32", kahan_summation=True, **bf16)
    row("bf16 params, Kahan (bf16 state)", 0.02, "bf16", kahan_summation=True, **bf16)
    for name in BROKEN:
        with broken_codec(name):
            row(f"int8, broken: {name}", 0.01, "int8")
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
