"""Fit MBE neurons to the 1-D targets of functions.py and generate the shipped presets.

Method (PAPER.md, "Fitting: facts measured for this project"). Once a basis's schedule parameters
(input scale and offset, threshold and reset schedules) are fixed, its spike pattern for every input
is fixed, and the neuron's output is *linear* in the slot weights and the output bias. So:

* the slot weights and the bias are never searched: for any candidate schedule they are the exact
  least-squares solution on the sample grid;
* only the schedule parameters are searched, derivative-free (the error is piecewise constant in
  them, so gradients are useless): Nelder-Mead on one basis at a time, with the other bases' columns
  projected out, cycled over the bases, multi-started, with the neuron grown 1 -> 2 -> 4 -> 8 bases
  (a fit of N bases starts from the best fit of ceil(N/2) bases plus fresh bases).

The spikes always come from ``spike_trains`` in neuron.py (the float32 reference), and the error
reported is always measured with ``simulate`` on the float32 tables of the finished
``MBEParameters`` over 10,000 uniform points, never on the search's internal numbers.

Parameterisation of one basis (5 numbers, threshold0 fixed): the neuron is invariant under scaling
input scale, offset, threshold and reset together, so threshold0 = 0.5 loses nothing. The basis
sees u = polarity * (x - x0) / width; with threshold = reset decaying by ln 2 (binary search) it
encodes x in [x0, x0 + width) (polarity +1) or (x0 - width, x0] (polarity -1) and is silent on the
other side of x0 -- a "hinge". Searched: x0, log width, threshold decay, log(reset0 / threshold0),
reset decay. The polarity is chosen at initialisation (a continuous search cannot flip it).

Saturation beyond the domain: every basis's active range (the inputs whose spike pattern is neither
every slot nor none) is projected into the fitted domain (``_Problem.schedule``), so beyond the
domain each basis is saturated -- all slots of a basis driven upwards fire, none of one driven
downwards, and vice versa on the other side -- and the neuron's output there is exactly its output at
the domain's edge (checked on the float32 tables by ``saturates``). A converter can then extend a
function beyond the domain with separate bases (e.g. a ramp for GELU/SiLU above 8) without the
preset's output still moving there.

Run ``python -m onnx_snn.mbe.fit --out onnx_snn/mbe/presets.json`` to regenerate the presets.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import zlib
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from onnx_snn.mbe.functions import TARGETS, mse, target, uniform_grid
from onnx_snn.mbe.neuron import MBEParameters, spike_trains

LN2 = math.log(2.0)
# Decay bounds: exp(-2.5 * 15) ~ 5e-17 and exp(0.5 * 15) ~ 2e3 keep every table entry a normal,
# finite float32 at T = 16 (and far beyond), so the tables stay meaningful in float32.
DECAY_BOUNDS = (-0.5, 2.5)
LOG_RHO_BOUNDS = (-10.0, 3.0)  # reset0 / threshold0 in [4.5e-5, 20]
THRESHOLD0 = 0.5  # fixed: see the module docstring (scale invariance)
SATURATION_MARGIN = 1e-5  # see _Problem.schedule
EVAL_POINTS = 10_000  # the error is always measured on this many uniform points
PRESET_BASES = (1, 2, 4, 8)
PRESET_TIMESTEPS = (4, 6, 8, 10, 12, 16, 24)  # the sweep's time steps


@dataclass(frozen=True)
class _Effort:
    """How hard the search works on one growth stage."""

    points: int  # search grid
    restarts: int  # random initialisations of the new bases
    cycles: int  # passes over all bases per restart
    fev: int  # Nelder-Mead evaluations per basis per pass
    hops: int  # re-initialisations of the least useful basis after the restarts
    polish: int  # final passes on the EVAL_POINTS grid


def _effort(function: str, bases: int, timesteps: int) -> _Effort:
    """Spend the time where the bars are: T = 16 neurons with 4 or 8 bases of the functions the
    paper's Transformers use (Table X). Small neurons are cheap to fit well anyway."""
    if function == "identity" and timesteps >= 12:  # the converter's one basis: a signed binary search
        return _Effort(points=2000, restarts=1, cycles=2, fev=150, hops=0, polish=0)
    # below T = 12 the converter's identity encoders have four bases, which must interleave their few
    # levels: the full search (T = 6: MSE 2.1e-5 -> 2.7e-6, 7.5x less than with the cheap one)
    hard = function in ("gelu", "exp2", "reciprocal", "rsqrt")
    if bases <= 2:
        return _Effort(points=2000, restarts=12, cycles=3, fev=200, hops=0, polish=0)
    if timesteps == 16 and hard:
        return _Effort(points=3000, restarts=4, cycles=5, fev=400, hops=6, polish=1)
    if timesteps <= 8 and function in ("gelu", "silu"):  # the MLP activations (MiniLM, SmolLM2) at T <= 8
        return _Effort(points=2000, restarts=8, cycles=5, fev=400, hops=10, polish=1)
    return _Effort(points=2000, restarts=3, cycles=4, fev=300, hops=3, polish=1)


class _Problem:
    """One target on one domain at T steps: builds a basis's spike columns from its 5 parameters."""

    def __init__(self, function: str, domain: tuple[float, float], timesteps: int):
        self.function = function
        self.signed = target(function).signed
        self.fn = target(function).fn
        self.domain = (float(domain[0]), float(domain[1]))
        self.timesteps = timesteps
        self.width = self.domain[1] - self.domain[0]

    def reach(self, k_th: float, rho: float, k_r: float) -> tuple[float, float]:
        """(a, b): a basis with these schedules is silent for u < a and fires every slot for u >= b,
        whatever it does in between. Computed from the float32-rounded schedules the tables store."""
        steps = range(self.timesteps)  # math.exp, as neuron.py expands the tables
        th = np.float32([THRESHOLD0 * math.exp(-t * k_th) for t in steps]).astype(np.float64)
        r = np.float32([THRESHOLD0 * rho * math.exp(-t * k_r) for t in steps]).astype(np.float64)
        # all fire iff u - (r[0] + ... + r[t-1]) >= th[t] for every t
        return float(th.min()), float(np.max(th + np.concatenate([[0.0], np.cumsum(r[:-1])])))

    def schedule(self, theta: np.ndarray, polarity: int) -> tuple[float, ...]:
        """(input_scale, input_offset, threshold0, threshold_decay, reset0, reset_decay); clipping
        keeps every candidate inside the bounds (Nelder-Mead itself is unbounded).

        Saturation: every basis's active range (the inputs whose spike pattern is neither all
        slots nor none) is projected into the domain, with a margin, so that beyond the domain on
        either side each basis's pattern is constant: the neuron's output beyond the domain is
        exactly its output at the domain's edge. An unsigned basis keeps its onset (the hinge) and
        has its saturation end capped at the domain's far edge; a signed basis (|u| is encoded)
        keeps its centre x0 inside the domain and saturates on both sides."""
        lo, hi = self.domain
        x0 = float(np.clip(theta[0], lo - 2 * self.width, hi + 2 * self.width))
        width = math.exp(float(np.clip(theta[1], math.log(1e-3 * self.width), math.log(100 * self.width))))
        k_th = float(np.clip(theta[2], *DECAY_BOUNDS))
        rho = math.exp(float(np.clip(theta[3], *LOG_RHO_BOUNDS)))
        k_r = float(np.clip(theta[4], *DECAY_BOUNDS))
        a, b = self.reach(k_th, rho, k_r)
        # margins: relative in u (float32 rounding along the T soft resets) and absolute in x
        # (float32 rounding of scale * x + offset), so the float32 tables saturate at the edges
        a_m, b_m = a * (1 - SATURATION_MARGIN), b * (1 + SATURATION_MARGIN)
        m = SATURATION_MARGIN * (abs(lo) + abs(hi) + self.width)
        shortest = 1e-3 * self.width
        if self.signed:  # active on (x0 - width*b, x0 + width*b): both ends inside the domain
            x0 = float(np.clip(x0, lo + m + shortest, hi - m - shortest))
            width = min(width, (min(x0 - lo, hi - x0) - m) / b_m)
        elif polarity > 0:  # silent below onset s = x0 + width*a, all fire from e = x0 + width*b
            s = float(np.clip(x0 + width * a, lo + m, hi - m - shortest))
            e = float(np.clip(x0 + width * b, s + shortest, hi - m))
            width = (e - s) / (b_m - a_m)
            x0 = s - width * a_m
        else:  # mirrored: silent above onset s = x0 - width*a, all fire below e = x0 - width*b
            s = float(np.clip(x0 - width * a, lo + m + shortest, hi - m))
            e = float(np.clip(x0 - width * b, lo + m, s - shortest))
            width = (s - e) / (b_m - a_m)
            x0 = s + width * a_m
        return (polarity / width, -polarity * x0 / width, THRESHOLD0, k_th, THRESHOLD0 * rho, k_r)

    def params(self, thetas: list[np.ndarray], polarities: list[int], weight=None, bias: float = 0.0) -> MBEParameters:
        s = [self.schedule(t, p) for t, p in zip(thetas, polarities)]
        if weight is None:
            weight = ((0.0,) * self.timesteps,) * len(s)
        return MBEParameters(
            function=self.function,
            domain=self.domain,
            signed=self.signed,
            input_scale=tuple(b[0] for b in s),
            input_offset=tuple(b[1] for b in s),
            threshold0=tuple(b[2] for b in s),
            threshold_decay=tuple(b[3] for b in s),
            reset0=tuple(b[4] for b in s),
            reset_decay=tuple(b[5] for b in s),
            weight=weight,
            bias=bias,
        )

    def columns(self, thetas: list[np.ndarray], polarities: list[int], x: np.ndarray) -> np.ndarray:
        """Regression columns [P, N*T]: 1 where a slot fired (-1 for a negative spike of a signed
        neuron), from the float32 reference simulation of the actual tables."""
        spikes, negative = spike_trains(self.params(thetas, polarities).tables, x)
        cols = spikes.astype(np.float64)
        if self.signed:
            cols[negative] *= -1.0
        return cols.reshape(len(x), -1)


def _orthonormal(a: np.ndarray) -> np.ndarray:
    """An orthonormal basis of a's column space (spike columns are often duplicated or empty)."""
    u, s, _ = np.linalg.svd(a, full_matrices=False)
    return u[:, s > s[0] * 1e-9]


def _sse_with(q: np.ndarray, r: np.ndarray, b: np.ndarray) -> float:
    """Least-squares residual of r (already orthogonal to q) after adding columns b to span(q)."""
    b = b - q @ (q.T @ b)
    c = b.T @ r
    w, v = np.linalg.eigh(b.T @ b)
    keep = w > max(w[-1], 1e-300) * 1e-9
    z = v[:, keep].T @ c
    return float(r @ r - np.sum(z * z / w[keep]))


class _Search:
    """Cyclic one-basis-at-a-time Nelder-Mead over the schedule parameters."""

    def __init__(self, problem: _Problem, points: int, rng: np.random.Generator):
        self.p = problem
        self.x = uniform_grid(problem.domain, points)
        self.y = problem.fn(self.x)
        self.rng = rng
        # NM's first simplex: x0 moves by 10% of the domain, the logs by ~0.3-0.5, decays by 0.15
        self.steps = np.array([0.1 * problem.width, 0.3, 0.15, 0.5, 0.15])

    def cols(self, theta: np.ndarray, polarity: int) -> np.ndarray:
        return self.p.columns([theta], [polarity], self.x)

    def sse(self, cols: list[np.ndarray]) -> float:
        q = _orthonormal(np.hstack([np.ones((len(self.x), 1))] + cols))
        r = self.y - q @ (q.T @ self.y)
        return float(r @ r)

    def contributions(self, cols: list[np.ndarray]) -> list[float]:
        """How much the error grows without each basis (its usefulness)."""
        base = self.sse(cols)
        return [self.sse(cols[:n] + cols[n + 1 :]) - base for n in range(len(cols))]

    def optimise_basis(self, n: int, thetas, polarities, cols, fev: int) -> float:
        """Nelder-Mead on basis n with the others fixed (projected out once). Updates in place."""
        others = [cols[m] for m in range(len(cols)) if m != n]
        q = _orthonormal(np.hstack([np.ones((len(self.x), 1))] + others))
        r = self.y - q @ (q.T @ self.y)
        pol = polarities[n]

        def objective(theta: np.ndarray) -> float:
            return _sse_with(q, r, self.cols(theta, pol))

        start = thetas[n]
        f0 = objective(start)
        signs = self.rng.choice([-1.0, 1.0], size=5)
        simplex = np.vstack([start] + [start + np.eye(5)[i] * self.steps[i] * signs[i] for i in range(5)])
        res = minimize(
            objective, start, method="Nelder-Mead",
            options=dict(initial_simplex=simplex, maxfev=fev, xatol=1e-7, fatol=0.0),
        )
        if res.fun < f0:
            thetas[n] = np.array(res.x)
            cols[n] = self.cols(thetas[n], pol)
            return float(res.fun)
        return f0

    def cycle(self, thetas, polarities, cols, cycles: int, fev: int) -> float:
        best = self.sse(cols)
        for _ in range(cycles):
            before = best
            for n in range(len(thetas)):
                best = min(best, self.optimise_basis(n, thetas, polarities, cols, fev))
            if best > before * (1 - 1e-4):  # converged: another pass would not pay
                break
        return best

    def random_basis(self, polarity: int) -> np.ndarray:
        """A binary-search hinge (threshold = reset, decay ln 2) at a random place of the domain,
        wide enough to reach (most of) the domain's far end on its side."""
        lo, hi = self.p.domain
        x0 = self.rng.uniform(lo, hi)
        reach = (hi - x0) if polarity > 0 else (x0 - lo)
        width = max(reach, 0.02 * self.p.width) * math.exp(self.rng.uniform(-1.0, 0.3))
        return np.array([x0, math.log(width), LN2, 0.0, LN2])


def _spread_bases(problem: _Problem, n: int) -> tuple[list[np.ndarray], list[int]]:
    """A deterministic start: hinges of alternating polarity at evenly spread offsets."""
    lo, hi = problem.domain
    thetas, pols = [], []
    for i in range(n):
        pol = 1 if i % 2 == 0 else -1
        if problem.signed:  # |u| is used, so a single centred binary search encodes the sign too
            x0, width = 0.5 * (lo + hi), 0.5 * problem.width * (1 + 1e-6)
            pol = 1
        else:
            pairs = (n + 1) // 2
            x0 = lo + problem.width * (i // 2 + 0.5) / pairs if n > 1 else lo
            width = max((hi - x0) if pol > 0 else (x0 - lo), 0.05 * problem.width)
            if n == 1:
                width = problem.width * (1 + 1e-6)  # the whole domain in [0, 1): all of it encoded
        thetas.append(np.array([x0, math.log(width), LN2, 0.0, LN2]))
        pols.append(pol)
    return thetas, pols


def _grow(problem: _Problem, bases: int, previous, effort: _Effort, rng: np.random.Generator):
    """Fit `bases` bases starting from `previous` (thetas, polarities) of fewer bases (or None)."""
    search = _Search(problem, effort.points, rng)
    best = None
    for restart in range(effort.restarts):
        # Small neurons are cheap: every other restart starts from scratch rather than from the
        # smaller neuron, whose basis may sit in a poor local minimum for this size.
        fresh = previous is None or (bases <= 2 and restart % 2 == 1)
        if fresh:
            if restart == 0:
                thetas, pols = _spread_bases(problem, bases)
            else:
                pols = [1 if (i + restart) % 2 == 0 else -1 for i in range(bases)]
                thetas = [search.random_basis(p) for p in pols]
        else:
            thetas = [t.copy() for t in previous[0]]
            pols = list(previous[1])
            for i in range(bases - len(thetas)):
                pol = 1 if (i + restart) % 2 == 0 else -1
                thetas.append(search.random_basis(pol))
                pols.append(pol)
        cols = [search.cols(t, p) for t, p in zip(thetas, pols)]
        sse = search.cycle(thetas, pols, cols, effort.cycles, effort.fev)
        if best is None or sse < best[0]:
            best = (sse, thetas, pols, cols)
    sse, thetas, pols, cols = best
    # Basin hopping: move the least useful basis somewhere new (either polarity), re-optimise all,
    # keep the move only if the error went down.
    for hop in range(effort.hops):
        if bases < 2:
            break
        worst = int(np.argmin(search.contributions(cols)))
        trial_t = [t.copy() for t in thetas]
        trial_p = list(pols)
        trial_p[worst] = 1 if hop % 2 == 0 else -1
        trial_t[worst] = search.random_basis(trial_p[worst])
        trial_c = list(cols)
        trial_c[worst] = search.cols(trial_t[worst], trial_p[worst])
        search.optimise_basis(worst, trial_t, trial_p, trial_c, effort.fev)
        trial_sse = search.cycle(trial_t, trial_p, trial_c, effort.cycles, effort.fev)
        if trial_sse < sse:
            sse, thetas, pols, cols = trial_sse, trial_t, trial_p, trial_c
    # Polish on the evaluation grid: the search grid cannot see the finest spike structure.
    if effort.polish:
        fine = _Search(problem, EVAL_POINTS, rng)
        fine_cols = [fine.cols(t, p) for t, p in zip(thetas, pols)]
        fine.cycle(thetas, pols, fine_cols, effort.polish, effort.fev)
    return thetas, pols


def saturates(params: MBEParameters) -> bool:
    """Whether every basis's spike pattern (and sign) at each edge of the domain is the one it has
    at the matching infinity, simulated on the float32 tables. Float32 rounding is monotone, so the
    pattern is then constant all the way out, and the neuron's output beyond the domain is exactly
    its output at the edge."""
    lo, hi = params.domain
    spikes, negative = spike_trains(params.tables, np.float32([lo, -np.inf, hi, np.inf]))
    return bool(
        np.array_equal(spikes[0], spikes[1]) and np.array_equal(negative[0], negative[1])
        and np.array_equal(spikes[2], spikes[3]) and np.array_equal(negative[2], negative[3])
    )


def _solve(problem: _Problem, thetas, polarities) -> MBEParameters:
    """The exact least-squares slot weights and bias on the 10,000-point grid (as the paper's
    fit used 10,000 uniform samples), rounded to float32 as the tables store them."""
    x = uniform_grid(problem.domain, EVAL_POINTS)
    y = problem.fn(x)
    a = np.hstack([problem.columns(thetas, polarities, x), np.ones((len(x), 1))])
    # rcond drops near-duplicate column combinations, which would otherwise get huge cancelling
    # weights whose float32 rounding would cost accuracy; a never-firing slot gets weight 0.
    sol = np.linalg.lstsq(a, y, rcond=1e-9)[0]
    t = problem.timesteps
    weight = tuple(
        tuple(float(np.float32(v)) for v in sol[n * t : (n + 1) * t]) for n in range(len(thetas))
    )
    params = problem.params(thetas, polarities, weight, float(np.float32(sol[-1])))
    if not saturates(params):  # the margins of _Problem.schedule are meant to make this impossible
        raise RuntimeError(f"{params.function} N={params.bases} T={t}: a basis does not saturate at the domain's edges")
    return params


def _stage_rng(function: str, domain, timesteps: int, bases: int, seed: int) -> np.random.Generator:
    # one seeded stream per growth stage: a stage's result does not depend on who asked for it
    key = f"{function}|{domain[0]!r}|{domain[1]!r}|{timesteps}|{bases}".encode()
    return np.random.default_rng([seed, zlib.crc32(key)])


def _chain(bases: int) -> list[int]:
    """The growth stages that lead to `bases`: 8 -> [1, 2, 4, 8], 6 -> [1, 2, 3, 6]."""
    stages = [bases]
    while stages[-1] > 1:
        stages.append((stages[-1] + 1) // 2)
    return stages[::-1]


def _fit_stages(function: str, timesteps: int, domain, seed: int, bases_list) -> dict[int, MBEParameters]:
    """Fit every stage of the growth chains of `bases_list` once (shared stages are reused)."""
    problem = _Problem(function, domain, timesteps)
    stages = sorted({s for b in bases_list for s in _chain(b)})
    found: dict[int, tuple] = {}
    result: dict[int, MBEParameters] = {}
    for n in stages:
        prev_n = (n + 1) // 2 if n > 1 else None
        previous = found[prev_n] if prev_n else None
        rng = _stage_rng(function, problem.domain, timesteps, n, seed)
        found[n] = _grow(problem, n, previous, _effort(function, n, timesteps), rng)
        result[n] = _solve(problem, *found[n])
    return result


def fit(function: str, *, bases: int, timesteps: int, domain: tuple[float, float] | None = None, seed: int = 0) -> MBEParameters:
    """Fit an MBE neuron of `bases` bases and `timesteps` steps to `function` (a name in TARGETS)
    on `domain` (default: the target's). Deterministic for a given seed."""
    if bases < 1 or timesteps < 1:
        raise ValueError(f"bases ({bases}) and timesteps ({timesteps}) must be at least 1")
    dom = target(function).domain if domain is None else (float(domain[0]), float(domain[1]))
    if not dom[0] < dom[1]:
        raise ValueError(f"domain {dom} is empty")
    return _fit_stages(function, timesteps, dom, seed, [bases])[bases]


def _key(d: dict) -> tuple:
    """(function, timesteps, bases, domain) of a preset's JSON entry."""
    return d["function"], len(d["weight"][0]), len(d["input_scale"]), tuple(d["domain"])


def generate(out: str, functions=None, bases_list=PRESET_BASES, timesteps_list=PRESET_TIMESTEPS, seed: int = 0) -> list[MBEParameters]:
    """Fit the presets of `functions` (default: every target), print one line each, and write the
    presets JSON atomically. Entries already in `out` that were not refitted (other functions,
    bases or timesteps) are kept as they are, so regenerating a few functions leaves the rest of
    the file untouched; entries stay ordered by function (TARGETS order), timesteps, bases."""
    functions = list(functions or TARGETS)
    for function in functions:
        target(function)  # a clear error for an unknown name before any work
    presets = []
    start = time.time()
    for function in functions:
        for t in timesteps_list:
            t0 = time.time()
            fitted = _fit_stages(function, t, target(function).domain, seed, bases_list)
            for n in bases_list:
                presets.append(fitted[n])
                print(
                    f"{function:>10} T={t:<2} N={n}  mse={mse(fitted[n]):.3e}"
                    f"  ({time.time() - t0:.0f}s, total {time.time() - start:.0f}s)",
                    flush=True,
                )
    entries = [p.to_dict() for p in presets]
    if os.path.exists(out):
        with open(out) as f:
            kept = [d for d in json.load(f)["presets"] if _key(d) not in {_key(e) for e in entries}]
        order = {name: i for i, name in enumerate(TARGETS)}
        entries = sorted(
            kept + entries,
            key=lambda d: (order.get(d["function"], len(order)),) + _key(d)[1:],
        )
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"format": 1, "presets": entries}, f, indent=1)
        f.write("\n")
    os.replace(tmp, out)
    print(f"wrote {len(entries)} presets ({len(presets)} fitted) to {out} in {time.time() - start:.0f}s", flush=True)
    return presets


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Fit MBE neuron presets (numpy + scipy, seeded).")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "presets.json"))
    ap.add_argument("--functions", nargs="*", default=None, help="default: every target")
    ap.add_argument("--bases", nargs="*", type=int, default=list(PRESET_BASES))
    ap.add_argument("--timesteps", nargs="*", type=int, default=list(PRESET_TIMESTEPS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    generate(args.out, args.functions, tuple(args.bases), tuple(args.timesteps), args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
