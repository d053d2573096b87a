"""Random small graphs for the fuzz tests (test_fuzz.py): every supported pattern in the forms its
rule promises, or one of its near misses, in context (ops before and after, several patterns
chained), with random inputs.

A graph is a chain of segments on one tensor, each some context ops then one pattern, written with
rule_kit's builders. For every pattern it writes the generator records what the converter must
do with it (an Instance): rewrite it, or leave it as a near miss (and whether the report names it).
Near misses are the kinds the rules check for: a constant perturbed beyond the rule's tolerance,
the operands of an op where order matters swapped, an inner value with a second consumer (a graph
output or another node), the wrong axes, a scale that is not a per-feature gamma. Genuine forms
include constants written within the tolerance (as exporters print them), commutative operands
in any order, constants as initializers or Constant nodes, scalars of shape () or (1, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from rule_kit import Builder, graph_model, run, write_gelu_erf, write_gelu_tanh, write_layernorm, write_rmsnorm

from onnx_snn.rules.base import CONSTANT_RTOL
from onnx_snn.runtime import newest_opset

ELEMENTWISE_REACH = {"gelu": 8.0, "silu": 8.0, "sigmoid": 8.0, "tanh": 4.0}  # the neurons' domains: [-r, r]
PATTERNS = ("gelu-erf", "gelu-tanh", "gelu-op", "silu", "sigmoid", "tanh", "softmax", "layernorm-op",
            "layernorm-decomposed", "rmsnorm", "attention", "linear")
NEAR_MISSES = {  # the near misses drawn for each pattern
    "gelu-erf": ("constant", "reverse", "shared"),
    "gelu-tanh": ("constant", "reverse", "shared"),
    # gelu-op has none here: a FastGelu's bias input is expanded first (the bias-gelu rule, tests/rules/test_bias_gelu.py)
    "silu": ("constant", "shared"),
    "layernorm-op": ("shared", "gamma", "axes"),
    "layernorm-decomposed": ("constant", "reverse", "shared", "axes", "gamma"),
    "rmsnorm": ("constant", "reverse", "shared", "axes", "gamma"),
}
MIN_OPSET = {"layernorm-op": 17}
LIMIT = 1e6  # a segment whose output leaves this (a near miss can compute anything) is not chained on


@dataclass
class Instance:
    pattern: str
    rule: str  # the rule whose pattern it is
    x: str
    y: str
    nodes: list[str]  # names of the nodes it wrote (node_name), Constants included
    anchor: str  # the node the rule is anchored on
    near_miss: str | None = None  # what was changed: None for the pattern as its rule promises it
    reported: bool = False  # the report must list the anchor as a near miss
    function: str | None = None  # elementwise patterns: the function the neuron computes
    site_output: str | None = None  # where the rewritten part ends, if before y (a shift left as an Add)


@dataclass
class Case:
    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    instances: list[Instance]
    hybrid: bool
    timesteps: int
    log: list[str] = field(default_factory=list)  # what was drawn, for the failure message


# ---- drawing numbers ---------------------------------------------------------------------------------

def within_tolerance(draw, value: float) -> float:
    """`value`, or printed with a relative error inside the rules' tolerance (half of it)."""
    if draw(st.booleans()):
        return value
    return value * (1 + draw(st.floats(-0.5, 0.5)) * CONSTANT_RTOL)


def beyond_tolerance(draw, value: float, smallest: float = 2 * CONSTANT_RTOL) -> float:
    """`value` perturbed by `smallest` (relative: 2x the rules' tolerance) up to 50%, either way."""
    factor = math.exp(draw(st.floats(math.log(smallest), math.log(0.5))))
    return value * (1 + draw(st.sampled_from([-1, 1])) * factor)


def perturbed(draw, name: str, value: float) -> float:
    """A constant of a pattern perturbed beyond what its rule accepts: an exponent by any amount (a
    power of a negative base is NaN unless the exponent is an integer), others beyond the tolerance."""
    return beyond_tolerance(draw, value, 1e-6 if name == "exponent" else 2 * CONSTANT_RTOL)


# ---- the graph being written ---------------------------------------------------------------------------

class Chain:
    """The Builder of a case, the value the next segment reads, its shape, and the case's records."""

    def __init__(self, draw, shape: tuple[int, ...], opset: int, feeds: dict[str, np.ndarray]):
        self.draw = draw
        self.b = Builder()
        self.input_shape = self.shape = shape
        self.opset = opset
        self.ms_domain = False
        self.feeds = feeds
        self.current = "x0"
        self.outputs: list[str] = []
        self.instances: list[Instance] = []
        self.log: list[str] = []
        self.count = 0

    def fresh_scope(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}/"

    def nodes_since(self, start: int) -> list[str]:
        return [n.name or n.output[0] for n in self.b.nodes[start:]]

    def model(self, outputs: list[str]) -> onnx.ModelProto:
        """The graph so far with these outputs (of their rank, dims unknown)."""
        ranks = [value.ndim for value in self.values(*outputs)]
        return self._model({name: [None] * rank for name, rank in zip(outputs, ranks)})

    def _model(self, outputs: dict, check: bool = True) -> onnx.ModelProto:
        inputs = {"x0": ["batch", *self.input_shape[1:]]}
        return graph_model(self.b.nodes, inputs, outputs, self.b.initializers, opset=self.opset,
                           ms_domain=self.ms_domain, check=check)

    def values(self, *names: str) -> list[np.ndarray]:
        """The values of the graph so far on the feeds."""
        model = self._model({}, check=False)
        model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
        return run(model, self.feeds)

    def extra_consumer(self, value: str) -> str:
        """A second consumer of `value`: a graph output, or a node whose output is one."""
        reader = self.draw(st.sampled_from(["graph-output", "node"]))
        if reader == "node":
            value = self.b.op("Neg", [value], f"{value.split('/')[-1]}_neg")
        self.outputs.append(value)
        return reader


# ---- the patterns -----------------------------------------------------------------------------------------

def scalar_shape(draw, rank: int) -> tuple[int, ...]:
    return draw(st.sampled_from([(), (1,), (1,) * rank]))


def commutative_swaps(draw, chain: Chain, write) -> set[str]:
    """Some of the Add and Mul nodes `write` writes, to be written with their operands reversed."""
    trial = Builder()
    with trial.scope(chain.b.prefix):
        write(trial)
    names = sorted(n.output[0] for n in trial.nodes if n.op_type in ("Add", "Mul") and len(set(n.input)) == 2)
    return set(draw(st.lists(st.sampled_from(names), unique=True))) if names else set()


def inner_values(chain: Chain, start: int, y: str, exclude=()) -> list[str]:
    """Values the pattern computes on the way to y (not Constants, not the input's Cast, not a weight's
    Identity, none named in `exclude`)."""
    values = []
    for node in chain.b.nodes[start:]:
        if node.op_type == "Constant" or node.op_type == "Identity" or node.output[0] == y:
            continue
        if node.op_type == "Cast" and node.input[0] == chain.current:
            continue
        values.append(node.output[0])
    return [v for v in values if v.split("/")[-1] not in exclude]


def elementwise_input(chain: Chain, function: str) -> str:
    """The current value scaled into the neuron's domain (a Mul by a constant the data decides)."""
    (values,) = chain.values(chain.current)
    magnitude = float(np.max(np.abs(values)))
    reach = ELEMENTWISE_REACH[function] * chain.draw(st.floats(0.2, 0.98))
    if magnitude == 0:
        return chain.current
    with chain.b.scope(chain.fresh_scope("scale")):
        return chain.b.op("Mul", [chain.current, chain.b.constant("c", reach / magnitude)], "x")


def gelu_written_out(chain: Chain, pattern: str, near_miss: str | None) -> Instance:
    draw, b = chain.draw, chain.b
    x = elementwise_input(chain, "gelu")
    form = {"half": draw(st.sampled_from(["first", "last", "middle"]))}
    if pattern == "gelu-erf":
        write, anchor, rule = write_gelu_erf, "erf", "gelu-erf"
        form["scale"] = "div" if near_miss == "reverse" else draw(st.sampled_from(["div", "mul"]))
        constants = {"sqrt2": math.sqrt(2), "one": 1.0, "half_value": 0.5}
        ordered = ["scaled"] if form["scale"] == "div" else []
    else:
        write, anchor, rule = write_gelu_tanh, "tanh", "gelu-tanh"
        form["cube"] = "pow" if near_miss == "reverse" else draw(st.sampled_from(["pow", "mul"]))
        constants = {"cubic": 0.044715, "one": 1.0, "half_value": 0.5, "scale": math.sqrt(2 / math.pi)}
        if form["cube"] == "pow":
            constants["exponent"] = 3.0
        ordered = ["cube"] if form["cube"] == "pow" else []
    form |= {name: value if name == "exponent" else within_tolerance(draw, value) for name, value in constants.items()}
    detail = ""
    if near_miss == "constant":
        name = draw(st.sampled_from(sorted(constants)))
        form[name] = perturbed(draw, name, constants[name])
        detail = f"{name}={form[name]:.6g}"
    if near_miss == "reverse":
        detail = ordered[0]
    scope = chain.fresh_scope(pattern.replace("-", "_"))
    settings = dict(constants=draw(st.sampled_from(["initializer", "node"])),
                    scalar_shape=scalar_shape(draw, len(chain.shape)))
    start = len(b.nodes)
    with b.scope(scope, **settings):
        reverse = commutative_swaps(draw, chain, lambda t: write(t, x, **form))
        if near_miss == "reverse":
            reverse.add(scope + detail)
        with b.scope(scope, reverse=reverse):
            y = write(b, x, **form)
            if near_miss == "shared":
                detail = draw(st.sampled_from(inner_values(chain, start, y)))
                detail += f" read by a {chain.extra_consumer(detail)}"
    reported = near_miss is not None and pattern == "gelu-erf"  # gelu-tanh's Tanh is then the tanh rule's
    chain.log.append(f"{pattern} {form} {settings} swapped={sorted(reverse)} near miss: {near_miss} {detail}")
    return Instance(pattern, rule, x, y, chain.nodes_since(start), scope + anchor,
                    near_miss and f"{near_miss} {detail}", reported, "gelu")


def gelu_op(chain: Chain, near_miss: str | None) -> Instance:
    draw, b = chain.draw, chain.b
    x = elementwise_input(chain, "gelu")
    forms = [("Gelu", "com.microsoft", {}), ("FastGelu", "com.microsoft", {})]
    if chain.opset >= 20:
        forms += [("Gelu", "", {}), ("Gelu", "", {"approximate": "none"}), ("Gelu", "", {"approximate": "tanh"})]
    op, domain, attributes = draw(st.sampled_from(forms))
    chain.ms_domain |= domain == "com.microsoft"
    scope = chain.fresh_scope("gelu_op")
    start = len(b.nodes)
    with b.scope(scope):
        y = b.op(op, [x], "y", domain=domain, **attributes)
    chain.log.append(f"gelu-op {op} {domain} {attributes} near miss: {near_miss}")
    return Instance("gelu-op", "gelu-op", x, y, chain.nodes_since(start), y, near_miss, bool(near_miss), "gelu")


def silu(chain: Chain, near_miss: str | None) -> Instance:
    draw, b = chain.draw, chain.b
    x = elementwise_input(chain, "silu")
    scope = chain.fresh_scope("silu")
    start = len(b.nodes)
    detail = ""
    with b.scope(scope, swap=draw(st.booleans())):
        argument = x
        if near_miss == "constant":  # Swish-beta, x * sigmoid(beta x), beta not 1
            beta = beyond_tolerance(draw, 1.0)
            argument = b.binary("Mul", x, b.constant("beta", beta), "scaled")
            detail = f"beta={beta:.6g}"
        b.op("Sigmoid", [argument], "sigmoid")
        y = b.binary("Mul", x, "sigmoid", "y")
        if near_miss == "shared":
            detail = f"sigmoid read by a {chain.extra_consumer(b.name('sigmoid'))}"
    chain.log.append(f"silu near miss: {near_miss} {detail}")
    return Instance("silu", "silu", x, y, chain.nodes_since(start), scope + "sigmoid",
                    near_miss and f"{near_miss} {detail}", False, "silu")


def activation(chain: Chain, function: str) -> Instance:
    x = elementwise_input(chain, function)
    start = len(chain.b.nodes)
    with chain.b.scope(chain.fresh_scope(function)):
        y = chain.b.op(function.capitalize(), [x], "y")
    chain.log.append(function)
    return Instance(function, "sigmoid-tanh", x, y, chain.nodes_since(start), y, function=function)


def softmax(chain: Chain) -> Instance:
    rank = len(chain.shape)
    axis = chain.draw(st.integers(-rank, rank - 1))
    x = chain.current
    start = len(chain.b.nodes)
    with chain.b.scope(chain.fresh_scope("softmax")):
        y = chain.b.op("Softmax", [x], "y", axis=axis)
    chain.log.append(f"softmax axis={axis}")
    return Instance("softmax", "softmax", x, y, chain.nodes_since(start), y)


def normalised_axes(draw, chain: Chain) -> tuple[int, ...]:
    """The trailing axes a normalisation reduces: the last, or the last two."""
    k = draw(st.integers(1, min(2, len(chain.shape) - 1)))
    return tuple(range(-k, 0))


def gamma_shapes(draw, chain: Chain, axes: tuple[int, ...], broadcast: bool) -> tuple[tuple[int, ...], str | None]:
    """gamma's shape: the normalised dims (maybe with leading ones), or with `broadcast` one that only
    broadcasts to x: a scalar, a per-row scale, one that also spans the dims before the axes, or
    one covering fewer of the normalised dims. Also why the rules will not take it, if they will not:
    a normalised dim of 1 looks like a broadcast to them."""
    normalised = tuple(chain.shape[a] for a in axes)
    if not broadcast:
        ones = (1,) * draw(st.integers(1, len(chain.shape) - len(axes)))
        shape = draw(st.sampled_from([normalised, ones + normalised]))
        return shape, "a normalised dim of 1" if 1 in normalised else None
    rank = len(chain.shape)
    options = {"scalar": draw(st.sampled_from([(), (1,)]))}
    if rank - len(axes) >= 2 and chain.shape[-len(axes) - 1] > 1:
        options["per-row"] = chain.shape[-len(axes) - 1:-len(axes)] + (1,) * len(axes)
        options["spanning more dims"] = chain.shape[-len(axes) - 1:]
    if len(axes) == 2 and chain.shape[-2] > 1:
        options["fewer dims"] = normalised[1:]
    kind = draw(st.sampled_from(sorted(options)))
    return options[kind], kind


def layernorm_op(chain: Chain, near_miss: str | None) -> Instance:
    draw, b = chain.draw, chain.b
    rank = len(chain.shape)
    axes = normalised_axes(draw, chain)
    x = chain.current
    if near_miss == "axes" and x == "x0":
        near_miss = "gamma"  # the graph declares x0's rank: a positive axis is known
    # a positive axis: the rule needs x's rank, declared for the graph input only
    axis = rank + axes[0] if near_miss == "axes" or (x == "x0" and draw(st.booleans())) else axes[0]
    gamma_shape, detail = gamma_shapes(draw, chain, axes, near_miss == "gamma")
    if detail and not near_miss:
        near_miss = "gamma"
    epsilon = draw(st.sampled_from([1e-12, 1e-6, 1e-5, 1e-3, 0.05]))
    has_beta = draw(st.booleans())
    scope = chain.fresh_scope("layernorm_op")
    start = len(b.nodes)
    rng = np.random.default_rng(2)
    with b.scope(scope):
        inputs = [x, b.weight("gamma", rng.uniform(0.5, 1.5, gamma_shape))]
        if has_beta:
            inputs.append(b.weight("beta", rng.uniform(-0.5, 0.5, gamma_shape)))
        # the optional Mean and InvStdDev outputs, named but unused, or (a near miss) used
        optional = [["mean"], ["mean", "inv_std"], ["", "inv_std"]]
        outputs = ["y"] + draw(st.sampled_from(optional if near_miss == "shared" else [[], *optional]))
        y = b.op("LayerNormalization", inputs, outputs, axis=axis, epsilon=epsilon)
        if near_miss == "shared":
            used = b.name(draw(st.sampled_from([n for n in outputs[1:] if n])))
            detail = f"{used} read by a {chain.extra_consumer(used)}"
    chain.log.append(f"layernorm-op axis={axis} gamma{gamma_shape} beta={has_beta} epsilon={epsilon} "
                     f"near miss: {near_miss} {detail}")
    return Instance("layernorm-op", "layernorm-op", x, y, chain.nodes_since(start), y,
                    near_miss and f"{near_miss} {detail}", bool(near_miss))


def normalisation(chain: Chain, pattern: str, near_miss: str | None) -> Instance:
    """LayerNorm or RMSNorm written out."""
    draw, b = chain.draw, chain.b
    rank = len(chain.shape)
    layernorm = pattern == "layernorm-decomposed"
    axes = normalised_axes(draw, chain)
    # the rank of x, which positive axes and GlobalAveragePool need, is known where onnx's shape
    # inference reaches: not after an op it has no schema for (com.microsoft's Gelu)
    ranked = all(n.domain in ("", "ai.onnx") for n in b.nodes)
    if ranked and draw(st.booleans()):  # as jax2onnx writes every axis
        axes = tuple(rank + a for a in axes)
    square = "pow" if near_miss == "reverse" else draw(st.sampled_from(["pow", "mul"]))
    # tf2onnx averages the trailing axes after the second with GlobalAveragePool
    mean_op = "ReduceMean" if near_miss == "axes" or len(axes) != rank - 2 or not ranked else draw(
        st.sampled_from(["ReduceMean", "GlobalAveragePool"]))
    # means without keepdims, their dims put back (a Reshape needs the rank, which the writer takes as 3)
    restores = [None] + (["unsqueeze"] if mean_op == "ReduceMean" and near_miss != "axes" else []) + (
        ["reshape"] if mean_op == "ReduceMean" and near_miss != "axes" and ranked and rank == 3 else [])
    form = dict(axes=axes, opset=chain.opset, square=square, mean_op=mean_op, restore=draw(st.sampled_from(restores)),
                epsilon=draw(st.sampled_from([1e-12, 1e-6, 1e-5, 1e-3, 0.05])),
                gamma=draw(st.sampled_from(["initializer", "identity"])), swap=draw(st.booleans()))
    if chain.opset >= 18:
        form["axes_as"] = draw(st.sampled_from(["initializer", "constant-node"]))
    along = ("x", "square", "norm") + (("d", "var", "std") if layernorm else ("ms", "root", "inverse"))
    form["casts"] = tuple(draw(st.lists(st.sampled_from(along), unique=True, max_size=3)))  # float32 Casts after these
    ordered = []  # the values of ops whose operand order matters
    if layernorm:
        form["divide"] = draw(st.sampled_from(["div", "reciprocal", "folded"]))  # folded: Keras' (tf2onnx)
        # moments: flax's (x - mean is only divided there: never with Keras' folded form, which has no x - mean else)
        form["variance"] = "centred" if form["divide"] == "folded" else draw(
            st.sampled_from(["centred", "moments", "moments-clipped"]))
        form["beta"] = draw(st.sampled_from(["initializer", "none"]))
        ordered = (["d"] + (["square"] if square == "pow" else []) + (["norm"] if form["divide"] == "div" else [])
                   + (["var"] if form["variance"] != "centred" else []))
    else:
        form["epsilon_cast_like"] = chain.opset >= 15 and draw(st.booleans())  # as jax2onnx writes it
        form["invert"] = draw(st.sampled_from(["div-one", "reciprocal", "div-x"]))
        ordered = (["square"] if form["square"] == "pow" else []) + {
            "div-one": ["inverse"], "div-x": ["norm"], "reciprocal": []}[form["invert"]]
        if form["invert"] == "div-one":
            form["numerator"] = within_tolerance(draw, 1.0)
    if form["square"] == "pow":
        form["exponent"] = 2.0
    form["gamma_shape"], detail = gamma_shapes(draw, chain, axes, near_miss == "gamma")
    if detail and not near_miss:
        near_miss = "gamma"
    # the rewrite may end at gamma, beta's Add following it: a beta that is not one value per feature,
    # or gamma's product read elsewhere too
    apart = None
    if layernorm and form["beta"] == "initializer" and form["divide"] != "folded" and not near_miss:
        apart = draw(st.sampled_from([None, "broadcast beta", "scaled read elsewhere"]))
    if apart == "broadcast beta":
        form["beta_shape"] = draw(st.sampled_from([(), (1,)]))
    reported = near_miss is not None
    if near_miss == "constant":
        constants = ["epsilon"] + [name for name in ("exponent", "numerator") if name in form]
        name = draw(st.sampled_from(constants))
        form[name] = draw(st.floats(0.1, 1.0)) if name == "epsilon" else perturbed(draw, name, form[name])
        detail = f"{name}={form[name]:.6g}"
        reported = layernorm or name != "exponent"  # RMSNorm is anchored on the square: no square, no RMSNorm
    if near_miss == "axes":
        first = axes[0] - rank if axes[0] >= 0 else axes[0]
        wrong = {}
        if rank + first >= 2:
            wrong["not trailing"] = dict(axes=(first - 1,))
        if layernorm and rank - len(axes) >= 2:
            wrong["variance over other axes"] = dict(var_axes=(first - 1, *range(first, 0)))
        try:  # the mean without its reduced dims must still broadcast against x
            if np.broadcast_shapes(chain.shape, chain.shape[:rank - len(axes)]) == chain.shape:
                wrong["keepdims=0"] = dict(keepdims=0)
        except ValueError:
            pass
        if not wrong:  # the positive axes that were a near miss convert now: the mean over the first axis is not
            wrong["first axis"] = dict(axes=(-rank,))
        detail = draw(st.sampled_from(sorted(wrong)))
        form |= wrong[detail]
    if near_miss == "reverse":
        detail = draw(st.sampled_from(ordered))
        # x - mean reversed is no LayerNorm (the RMSNorm rule may take mean - x); Pow(2, x) no RMSNorm
        reported = detail != "d" and (layernorm or detail != "square")
    write = write_layernorm if layernorm else write_rmsnorm
    x = chain.current
    scope = chain.fresh_scope(pattern.replace("-", "_"))
    settings = dict(constants=draw(st.sampled_from(["initializer", "node"])), scalar_shape=scalar_shape(draw, rank))
    start = len(b.nodes)
    with b.scope(scope, **settings):
        reverse = {scope + detail} if near_miss == "reverse" else set()
        with b.scope(scope, reverse=reverse):
            y = write(b, x, **form)
            if near_miss == "shared":
                value = draw(st.sampled_from(inner_values(chain, start, y, exclude=("scaled",))))
                detail = f"{value} read by a {chain.extra_consumer(value)}"
                # RMSNorm is anchored on the square: a square read elsewhere is not followed to the mean
                reported = layernorm or not value.split("/")[-1].startswith("square")
            if apart == "scaled read elsewhere":
                detail = f"scaled read by a {chain.extra_consumer(b.name('scaled'))}"
    anchor = scope + (("mean_reduced" if form["restore"] else "mean") if layernorm else "square")
    chain.log.append(f"{pattern} {form} {settings} {apart or ''} near miss: {near_miss} {detail}")
    return Instance(pattern, pattern, x, y, chain.nodes_since(start), anchor, near_miss and f"{near_miss} {detail}",
                    reported, site_output=scope + "scaled" if apart else None)


def attention(chain: Chain) -> list[Instance]:
    """x (x^T c) [softmax] x: both products of computed values."""
    draw, b = chain.draw, chain.b
    rank = len(chain.shape)
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    x = chain.current
    scope = chain.fresh_scope("attention")
    start = len(b.nodes)
    with b.scope(scope):
        keys = b.op("Transpose", [x], "keys", perm=perm)
        scores = b.op("MatMul", [x, keys], "scores")
        scaled = b.op("Mul", [scores, b.constant("c", 1 / math.sqrt(chain.shape[-1]))], "scaled")
    products = [Instance("attention", "activation-product", x, scores, chain.nodes_since(start), scores)]
    chain.current = scaled
    instances = [products[0]]
    if draw(st.booleans()):
        instances.append(softmax(chain))
    start = len(b.nodes)
    with b.scope(scope):
        y = b.op("MatMul", [chain.current, x], "y")
    instances.append(Instance("attention", "activation-product", chain.current, y, chain.nodes_since(start), y))
    chain.log.append("attention")
    return instances


def linear(chain: Chain) -> Instance:
    draw, b = chain.draw, chain.b
    rank, features = len(chain.shape), chain.shape[-1]
    rng = np.random.default_rng(3)
    x = chain.current
    kinds = ["matmul", "matmul-bias", "gemm"] + (["conv"] if rank in (3, 4) else [])
    kind = draw(st.sampled_from(kinds))
    scope = chain.fresh_scope("linear")
    start = len(b.nodes)
    with b.scope(scope):
        w = rng.uniform(-1, 1, (features, features)) / math.sqrt(features)
        if kind.startswith("matmul"):
            y = anchor = b.op("MatMul", [x, b.weight("w", w)], "y")
            if kind == "matmul-bias":
                y = b.op("Add", [y, b.weight("bias", rng.uniform(-1, 1, features))], "biased")
        elif kind == "gemm":
            transposed = draw(st.booleans())
            rows = b.op("Reshape", [x, b.constant("rows_shape", [-1, features], np.int64)], "rows")
            weight, bias = b.weight("w", w.T if transposed else w), b.weight("bias", rng.uniform(-1, 1, features))
            anchor = b.op("Gemm", [rows, weight, bias], "gemm", transB=int(transposed))
            y = b.op("Reshape", [anchor, b.constant("shape", [-1, *chain.shape[1:]], np.int64)], "y")
        else:
            channels, spatial = chain.shape[1], rank - 2
            kernel = rng.uniform(-1, 1, (channels, channels) + (3,) * spatial) / math.sqrt(channels * 3 ** spatial)
            y = anchor = b.op("Conv", [x, b.weight("w", kernel)], "y", pads=[1] * (2 * spatial))
    chain.log.append(f"linear {kind}")
    return Instance("linear", "linear-input", x, y, chain.nodes_since(start), anchor)


def context(chain: Chain) -> None:
    """An op before a pattern that no rule rewrites."""
    draw, b = chain.draw, chain.b
    kind = draw(st.sampled_from(["bias", "scale", "transpose", "relu", "neg", "identity"]))
    with b.scope(chain.fresh_scope("context")):
        if kind == "bias":
            bias = np.random.default_rng(4).uniform(-1, 1, chain.shape[-1])
            chain.current = b.op("Add", [chain.current, b.weight("bias", bias)], "y")
        elif kind == "scale":
            chain.current = b.op("Mul", [chain.current, b.constant("c", draw(st.sampled_from([-3.0, 0.3, 2.0])))], "y")
        elif kind == "transpose":
            rank = len(chain.shape)
            chain.current = b.op("Transpose", [chain.current], "y", perm=list(range(rank - 2)) + [rank - 1, rank - 2])
            chain.shape = chain.shape[:-2] + (chain.shape[-1], chain.shape[-2])
        else:
            chain.current = b.op(kind.capitalize(), [chain.current], "y")
    chain.log.append(kind)


def segment(chain: Chain, pattern: str, near_miss: str | None) -> None:
    start_value, start_shape = chain.current, chain.shape
    for _ in range(chain.draw(st.integers(0, 2))):
        context(chain)
    if pattern in ("gelu-erf", "gelu-tanh"):
        written = [gelu_written_out(chain, pattern, near_miss)]
    elif pattern == "gelu-op":
        written = [gelu_op(chain, near_miss)]
    elif pattern == "silu":
        written = [silu(chain, near_miss)]
    elif pattern in ("sigmoid", "tanh"):
        written = [activation(chain, pattern)]
    elif pattern == "softmax":
        written = [softmax(chain)]
    elif pattern == "layernorm-op":
        written = [layernorm_op(chain, near_miss)]
    elif pattern in ("layernorm-decomposed", "rmsnorm"):
        written = [normalisation(chain, pattern, near_miss)]
    elif pattern == "attention":
        written = attention(chain)
    else:
        written = [linear(chain)]
    chain.instances += written
    chain.current = written[-1].y
    (values,) = chain.values(chain.current)
    if not np.all(np.isfinite(values)) or np.max(np.abs(values)) > LIMIT:
        chain.outputs.append(chain.current)  # a near miss computing something wild: chain on its input
        chain.current, chain.shape = start_value, start_shape


@st.composite
def cases(draw, pattern: str, near_miss: bool) -> Case:
    """A graph of 1 to 3 segments, one of them `pattern` (a near miss of it with `near_miss`), the
    others any pattern (with `near_miss`, maybe near misses too)."""
    others = draw(st.lists(st.sampled_from(PATTERNS), max_size=2))
    place = draw(st.integers(0, len(others)))
    patterns = others[:place] + [pattern] + others[place:]
    mutated = {place} if near_miss else set()
    if near_miss:
        mutated |= {i for i, p in enumerate(patterns) if p in NEAR_MISSES and draw(st.booleans())}
    opset = draw(st.integers(max([14] + [MIN_OPSET.get(p, 14) for p in patterns]), newest_opset()))
    rank = draw(st.integers(2, 4))
    batch, rows, features = draw(st.integers(1, 3)), draw(st.sampled_from([1, 3, 8])), draw(st.sampled_from([4, 8]))
    shape = (batch, *(2,) * (rank - 3), *(rows,) * (rank > 2), features)  # [B, 8], [B, S, 8], [B, 2, S, 8]
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    scale = math.exp(draw(st.floats(math.log(0.05), math.log(30))))
    x0 = rng.normal(draw(st.floats(-1, 1)) * scale, scale, shape).astype(np.float32)
    chain = Chain(draw, shape, opset, {"x0": x0})
    chain.log.append(f"opset {opset}, x0 {shape} ~ N({float(x0.mean()):.3g}, {float(x0.std()):.3g}^2)")
    for i, name in enumerate(patterns):
        segment(chain, name, draw(st.sampled_from(NEAR_MISSES[name])) if i in mutated else None)
    outputs = [name for name in dict.fromkeys(chain.outputs + [chain.current]) if name != "x0"]
    hybrid = draw(st.booleans())
    timesteps = draw(st.sampled_from([4, 8, 16, 24]))  # the fewest steps presets ship for, too
    chain.log.append(f"hybrid={hybrid}, T={timesteps}")
    return Case(chain.model(outputs), chain.feeds, chain.instances, hybrid, timesteps, chain.log)

