"""What the rule tests share: tiny models (torch exports and onnx.helper graphs), the rule-set
search, and the end-to-end conversion compared against the original in onnxruntime.

In the style of onnxruntime's transformers optimizer tests: build each form a rule promises, run
find_sites over the whole rule set, and count that rule's sites and near misses.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper

import error_bounds
from error_bounds import normalisation_bound, softmax_bound

import onnx_snn
from onnx_snn.pipeline import convert_with_report
from onnx_snn.graph import Graph
from onnx_snn.mbe.neuron import simulate
from onnx_snn.mbe.presets import preset
from onnx_snn.neurons import LINEAR_CHANNEL_MARGIN, RANGE_MARGIN
from onnx_snn.ops.common import IR_VERSION
from onnx_snn.rewrite import find_sites
from onnx_snn.rules import rule_set
from onnx_snn.rules.base import NearMiss, Site
from onnx_snn.variants import export_legacy

TIMESTEPS = 16

# Elementwise sites (GELU, SiLU, Sigmoid, Tanh) become one MBE neuron: the converter's preset for
# the function (DEFAULT_BASES: N=4; T=16), unchanged while the calibrated range is inside its
# domain. Their error against the exact function on 10,000 uniform points of the domain, as
# measured for the presets shipped now (simulated tables; `onnx-snn neurons` lists the same MSEs):
#     gelu    [-8, 8]  MSE 8.3e-06  max 0.0168
#     silu    [-8, 8]  MSE 3.5e-05  max 0.0306
#     tanh    [-4, 4]  MSE 8.4e-06  max 0.0137
#     sigmoid [-8, 8]  MSE 1.8e-06  max 0.0064
# A converted site must compute exactly that neuron (checked against the numpy reference), so its
# error against the original graph is at most the neuron's error against the function plus the
# gap between the function and what the original computes: float32 rounding (1e-5), and for
# GELU's tanh forms the tanh approximation itself (max 4.7e-4, RMS 1.7e-4 on [-8, 8]). Those
# bounds are computed at test time from the preset (how good the presets are is tests/test_fit.py's).
NEURON_DOMAIN = {"gelu": (-8.0, 8.0), "silu": (-8.0, 8.0), "tanh": (-4.0, 4.0), "sigmoid": (-8.0, 8.0)}
FLOAT32_GAP = 1e-5  # the spiking kernel vs the reference, and the original's float32 rounding


# ---- building models -------------------------------------------------------------------------------

def export(module, *args, opset: int = 14, dynamo: bool = False) -> onnx.ModelProto:
    """`module` exported by torch (the legacy TorchScript exporter unless dynamo): inputs x0, x1, ...,
    output y, the first dimension of each dynamic."""
    import torch

    names = [f"x{i}" for i in range(len(args))]
    if not dynamo:
        return export_legacy(module, names, args, opset, dynamic=("batch",))
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = torch.export.Dim("batch")
        program = torch.onnx.export(module, tuple(args), input_names=names, output_names=["y"], dynamo=True,
                                    opset_version=opset, verbose=False, dynamic_shapes=tuple({0: batch} for _ in args))
        return program.model_proto


def const(name: str, value, dtype=np.float32) -> onnx.NodeProto:
    """A Constant node with output `name`."""
    return oh.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, dtype), name))


def init(name: str, value, dtype=np.float32) -> onnx.TensorProto:
    """An initializer."""
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def graph_model(nodes, inputs, outputs, initializers=(), opset: int = 17, ms_domain: bool = False,
                check: bool = True) -> onnx.ModelProto:
    """A model of `nodes`. inputs: {name: shape} (float32; a str dim is symbolic); outputs:
    {name: shape} (None: shape unknown), or names (float32 of the first input's shape)."""
    if not isinstance(outputs, dict):
        outputs = {name: next(iter(inputs.values())) for name in outputs}

    def info(name, shape):
        return oh.make_tensor_value_info(name, TensorProto.FLOAT, None if shape is None else list(shape))

    graph = oh.make_graph(
        list(nodes), "rule_test", [info(name, shape) for name, shape in inputs.items()],
        [info(name, shape) for name, shape in outputs.items()],
        list(initializers),
    )
    opsets = [oh.make_opsetid("", opset)] + ([oh.make_opsetid("com.microsoft", 1)] if ms_domain else [])
    model = oh.make_model(graph, opset_imports=opsets, producer_name="rule_test")
    model.ir_version = IR_VERSION
    if check:
        onnx.checker.check_model(model)
    return model


# ---- finding sites ---------------------------------------------------------------------------------

def search(model: onnx.ModelProto, rules=None) -> tuple[list[Site], list[NearMiss]]:
    """find_sites over the whole rule set (or `rules`)."""
    return find_sites(Graph(model), rule_set() if rules is None else rules)


def sites_of(model: onnx.ModelProto, rule: str, rules=None) -> list[Site]:
    return [s for s in search(model, rules)[0] if s.rule == rule]


def near_misses_of(model: onnx.ModelProto, rule: str, rules=None) -> list[NearMiss]:
    return [m for m in search(model, rules)[1] if m.rule == rule]


def rules_found(model: onnx.ModelProto, rules=None) -> dict[str, int]:
    """Sites by rule."""
    counts: dict[str, int] = {}
    for site in search(model, rules)[0]:
        counts[site.rule] = counts.get(site.rule, 0) + 1
    return counts


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The model's initializers by name."""
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def op_types(site: Site) -> list[str]:
    return sorted(n.op_type for n in site.nodes)


# ---- converting ------------------------------------------------------------------------------------

def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The model in onnxruntime without the custom-op library (an original model)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def run_spiking(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return onnx_snn.session(model, sess_options=options).run(None, feeds)


def convert(model: onnx.ModelProto, calibration: dict[str, np.ndarray], **options):
    """(the spiking model, its report), converted at T=16 with the given calibration batch."""
    return convert_with_report(model, timesteps=TIMESTEPS, calibration=calibration, **options)


def grid(function: str, points: int = 10_000, columns: int = 8) -> np.ndarray:
    """Uniform points of the function's neuron domain (cell midpoints), shaped [points/columns, columns]."""
    lo, hi = NEURON_DOMAIN[function]
    x = lo + (hi - lo) * (np.arange(points) + 0.5) / points
    return x.astype(np.float32).reshape(-1, columns)


def neuron_reference(function: str, x: np.ndarray) -> np.ndarray:
    """The numpy reference of the neuron the converter uses for `function` on an in-domain range."""
    from onnx_snn.neurons import DEFAULT_BASES

    tables = preset(function, bases=DEFAULT_BASES[function], timesteps=TIMESTEPS).tables
    return simulate(tables, x.astype(np.float32))[0].reshape(x.shape)


def exact(function: str, x: np.ndarray) -> np.ndarray:
    """The function itself, in float64."""
    from onnx_snn.mbe.functions import target

    return target(function).fn(x.astype(np.float64))


def gelu_tanh_approximation(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def assert_elementwise_conversion(model: onnx.ModelProto, function: str, rule: str, nodes_left: int | None = None,
                                  computes=None) -> None:
    """Convert a model y = f(x0) whose input is [batch, 8] and check: the report names one site of
    `rule` and no nonlinear op left; the spiking model computes exactly the converter's neuron for
    `function` on x0 (the right neuron on the right tensor); and its error against the original is
    within the neuron's own error plus the gap between `function` and what the original computes
    (`computes`: that function in float64 when it is not `function` itself, e.g. GELU's tanh form)."""
    x = grid(function)
    spiking, report = convert(model, {"x0": x})
    assert report.replaced == {rule: 1}
    assert report.left == []
    assert len([n for n in spiking.graph.node if n.op_type == "MBENeuron"]) == 1
    if nodes_left is not None:  # the pattern's nodes are gone (dead Constant nodes aside)
        assert len([n for n in spiking.graph.node if n.op_type != "Constant"]) == nodes_left
    actual = run_spiking(spiking, {"x0": x})[0]
    neuron = neuron_reference(function, x)
    np.testing.assert_allclose(actual, neuron, rtol=0, atol=1e-6)

    target = exact(function, x)
    neuron_error = neuron - target
    gap = (np.zeros_like(target) if computes is None else computes(x) - target)
    error = actual.astype(np.float64) - run(model, {"x0": x})[0]
    rms = lambda e: float(np.sqrt(np.mean(e ** 2)))  # noqa: E731
    assert np.max(np.abs(error)) <= np.max(np.abs(neuron_error)) + np.max(np.abs(gap)) + FLOAT32_GAP
    assert rms(error) <= rms(neuron_error) + rms(gap) + FLOAT32_GAP


def gelu_product(b: "Builder", x: str, one_plus: str, half: str) -> str:
    """The end of a written-out GELU, 0.5 * x * one_plus, with the 0.5 "first" ((x 0.5) one_plus),
    "last" ((x one_plus) 0.5) or "middle" ((one_plus 0.5) x); the constant is named "half"."""
    if half == "first":
        return b.binary("Mul", b.binary("Mul", x, "half", "half_x"), one_plus, "y")
    if half == "last":
        return b.binary("Mul", b.binary("Mul", x, one_plus, "x_times"), "half", "y")
    return b.binary("Mul", b.binary("Mul", one_plus, "half", "half_times"), x, "y")


def write_gelu_erf(b: "Builder", x: str, scale: str = "div", half: str = "last", sqrt2: float = math.sqrt(2),
                   one: float = 1.0, half_value: float = 0.5) -> str:
    """gelu(x) written out with Erf; returns the output ("y" in the scope).

    scale: "div" (x / sqrt2) or "mul" (x * (1/sqrt2)); half: where the 0.5 goes: "last"
    ((x * (1 + erf)) * 0.5), "first" ((x * 0.5) * (1 + erf)) or "middle" (((1 + erf) * 0.5) * x)."""
    if scale == "div":
        scaled = b.binary("Div", x, b.constant("sqrt2", sqrt2), "scaled")
    else:
        scaled = b.binary("Mul", x, b.constant("inv_sqrt2", 1 / sqrt2), "scaled")
    b.op("Erf", [scaled], "erf")
    add = b.binary("Add", "erf", b.constant("one", one), "one_plus_erf")
    b.constant("half", half_value)
    return gelu_product(b, x, add, half)


def write_gelu_tanh(b: "Builder", x: str, cube: str = "pow", half: str = "first", cubic: float = 0.044715,
                    scale: float = math.sqrt(2 / math.pi), exponent: float = 3.0, one: float = 1.0,
                    half_value: float = 0.5) -> str:
    """GELU's tanh approximation of x written out; returns the output ("y" in the scope). cube: "pow"
    (Pow(x, 3)) or "mul" (Mul(x, Mul(x, x))); half: as gelu_product."""
    if cube == "pow":
        b.binary("Pow", x, b.constant("three", exponent), "cube")
    else:
        b.op("Mul", [x, x], "square")
        b.binary("Mul", x, "square", "cube")
    b.binary("Mul", "cube", b.constant("cubic", cubic), "cubic_term")
    b.binary("Add", x, "cubic_term", "inner")
    b.binary("Mul", "inner", b.constant("scale", scale), "argument")
    b.op("Tanh", ["argument"], "tanh")
    b.binary("Add", "tanh", b.constant("one", one), "one_plus_tanh")
    b.constant("half", half_value)
    return gelu_product(b, x, "one_plus_tanh", half)


def bert_block(name: str = "BertSelfAttention", hidden: int = 8):
    """transformers' Bert block `name` (eager attention) with 2 heads, as a module of x (its first output)."""
    import torch
    from transformers import BertConfig
    from transformers.models.bert import modeling_bert

    config = BertConfig(hidden_size=hidden, num_attention_heads=2, intermediate_size=16)
    config._attn_implementation = "eager"

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = getattr(modeling_bert, name)(config)

        def forward(self, x):
            return self.block(x)[0]

    return Block()


# ---- normalisations written out ---------------------------------------------------------------------

HIDDEN = 8


class Builder:
    """Collects nodes and initializers; constants as initializers or as Constant nodes.

    Patterns are written with short value names ("erf", "d", "half"); inside `scope(prefix)` each
    name it writes gets the prefix, so one graph can hold several patterns (the fuzz tests chain
    them). A name that was not written in the scope (an input such as "x0") is used as given."""

    def __init__(self, constants: str = "initializer", swap: bool = False, scalar_shape: tuple[int, ...] = ()):
        self.constants = constants
        self.swap = swap  # write the operands of Add and Mul the other way round
        self.scalar_shape = scalar_shape  # the shape of scalar constants: () or ones, as exporters write them
        self.reverse: set[str] = set()  # values whose node reads its two operands the other way round
        self.prefix = ""
        self.written: set[str] = set()
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    @contextmanager
    def scope(self, prefix: str, **settings):
        """Write with value names prefixed, and with other `settings` (constants, swap, scalar_shape,
        reverse) for the time being."""
        saved = {name: getattr(self, name) for name in ("prefix", *settings)}
        self.prefix = prefix
        for name, value in settings.items():
            setattr(self, name, value)
        try:
            yield self
        finally:
            for name, value in saved.items():
                setattr(self, name, value)

    def name(self, value: str) -> str:
        """The graph name of `value`: a value written in this scope by its short name, else `value`."""
        full = self.prefix + value
        return full if full in self.written else value

    def _new(self, value: str) -> str:
        full = value if self.prefix and value.startswith(self.prefix) else self.prefix + value
        self.written.add(full)
        return full

    def constant(self, name: str, value, dtype=np.float32) -> str:
        name = self._new(name)
        value = np.asarray(value, dtype)
        if value.size == 1:
            value = value.reshape(self.scalar_shape)
        if self.constants == "node":
            self.nodes.append(const(name, value, dtype))
        else:
            self.initializers.append(init(name, value, dtype))
        return name

    def weight(self, name: str, value) -> str:
        """A weight: always an initializer (exporters never write weights as Constant nodes)."""
        name = self._new(name)
        self.initializers.append(init(name, value))
        return name

    def op(self, op_type: str, inputs, output: str | list[str], **attributes) -> str:
        """The node; `output` may be a list (of names, "" for an output left out): the first is returned."""
        inputs = [self.name(i) for i in inputs]
        outputs = [self._new(name) if name else "" for name in ([output] if isinstance(output, str) else output)]
        if outputs[0] in self.reverse:
            inputs.reverse()
        self.nodes.append(oh.make_node(op_type, inputs, outputs, **attributes))
        return outputs[0]

    def binary(self, op_type: str, a: str, b: str, output: str) -> str:
        """A binary op; with swap, commutative ones (Add, Mul) get their operands reversed."""
        return self.op(op_type, [b, a] if self.swap and op_type in ("Add", "Mul") else [a, b], output)

    def cast(self, name: str) -> str:
        return self.op("Cast", [name], f"{name}_f32", to=TensorProto.FLOAT)

    def cast_if(self, name: str, key: str, casts) -> str:
        """name followed by a float32 Cast when `key` is one of `casts`."""
        return self.cast(name) if key in casts else name

    def reduce_mean(self, x: str, output: str, axes, keepdims: int, opset: int, axes_as: str,
                    op_type: str = "ReduceMean", restore: str | None = None, rank: int = 3) -> str:
        """A ReduceMean, or (op_type "GlobalAveragePool", as tf2onnx writes a trailing mean) that.
        restore: without keepdims, the reduced dims put back by an "unsqueeze" of the axes or a
        "reshape" to [0, ..., 0, 1, ..., 1] (x of `rank`), or (a list) to that shape."""
        if op_type == "GlobalAveragePool":
            return self.op(op_type, [x], output)
        if restore is not None:
            reduced = self.reduce_mean(x, f"{output}_reduced", axes, 0, opset, axes_as)
            if restore == "unsqueeze":
                values, op_type = list(axes), "Unsqueeze"
            else:
                values = restore if isinstance(restore, list) else [0] * (rank - len(axes)) + [1] * len(axes)
                op_type = "Reshape"
            name = self._new(f"{output}_{op_type.lower()}")
            self.initializers.append(init(name, values, np.int64))
            return self.op(op_type, [reduced, name], output)
        if opset < 18:
            return self.op("ReduceMean", [x], output, axes=list(axes), keepdims=keepdims)
        axes_name = self._new(f"{output}_axes")
        if axes_as == "constant-node":
            self.nodes.append(const(axes_name, list(axes), np.int64))
        else:
            self.initializers.append(init(axes_name, list(axes), np.int64))
        return self.op("ReduceMean", [x, axes_name], output, keepdims=keepdims)

    def model(self, inputs, outputs, opset: int = 17, **kwargs) -> onnx.ModelProto:
        if not isinstance(outputs, dict):
            outputs = [self.name(o) for o in outputs]
        return graph_model(self.nodes, inputs, outputs, self.initializers, opset=opset, **kwargs)


def gamma_beta(b: Builder, normalised: str, gamma: str, beta: str, swap: bool, shape=(HIDDEN,),
               beta_shape=None) -> str:
    """normalised * gamma + beta. gamma: "initializer", "identity" (an Identity of an initializer, as
    torch writes a deduplicated weight), "input" (a computed value) or "none"; beta: "initializer"
    or "none"; beta_shape: beta's when it is not gamma's."""
    rng = np.random.default_rng(1)
    if gamma == "none":
        return normalised
    if gamma == "input":
        name = "gamma_in"
    else:
        name = b.weight("gamma", rng.uniform(0.5, 1.5, shape))
        if gamma == "identity":
            name = b.op("Identity", [name], "gamma_shared")
    scaled = b.op("Mul", [name, normalised] if swap else [normalised, name], "scaled")
    if beta == "none":
        return scaled
    bias = b.weight("beta", rng.uniform(-0.5, 0.5, shape if beta_shape is None else beta_shape))
    return b.op("Add", [bias, scaled] if swap else [scaled, bias], "shifted")


def folded_gamma_beta(b: Builder, x: str, mean: str, inverse_std: str, gamma: str, beta: str, swap: bool,
                      shape=(HIDDEN,), beta_shape=None) -> str:
    """Keras' LayerNormalization: inv = inverse_std * gamma; x * inv + (-mean * inv [+ beta]).
    gamma: "initializer" or "input"; beta: "initializer" or "none"."""
    rng = np.random.default_rng(1)
    name = "gamma_in" if gamma == "input" else b.weight("gamma", rng.uniform(0.5, 1.5, shape))

    def mul(a, c, output):
        return b.op("Mul", [c, a] if swap else [a, c], output)

    inv = mul(inverse_std, name, "inv")
    x_scaled, offset = mul(x, inv, "x_scaled"), mul(b.op("Neg", [mean], "neg_mean"), inv, "mean_scaled")
    if beta != "none":
        bias = b.weight("beta", rng.uniform(-0.5, 0.5, shape if beta_shape is None else beta_shape))
        offset = b.op("Add", [bias, offset] if swap else [offset, bias], "offset")
    return b.op("Add", [offset, x_scaled] if swap else [x_scaled, offset], "shifted")


def square_of(b: Builder, x: str, square: str, exponent: float) -> str:
    """x squared as Pow(x, exponent) (square="pow") or x * x."""
    return b.op("Pow", [x, b.constant("two", exponent)], "square") if square == "pow" else b.op("Mul", [x, x], "square")


def root_of(b: Builder, mean: str, epsilon: float, swap: bool, sum_name: str, root_name: str,
            cast_like: str | None = None) -> str:
    """Sqrt(mean + epsilon), the Add's operands swapped when `swap`; epsilon CastLike `cast_like`
    if given (as jax2onnx writes it)."""
    eps = b.constant("epsilon", epsilon)
    if cast_like is not None:
        eps = b.op("CastLike", [eps, cast_like], "epsilon_cast")
    return b.op("Sqrt", [b.op("Add", [eps, mean] if swap else [mean, eps], sum_name)], root_name)


def write_layernorm(b: Builder, x: str, opset: int = 17, axes=(-1,), var_axes=None, keepdims: int = 1,
                    axes_as: str = "initializer", square: str = "pow", divide: str = "div", casts=(),
                    epsilon: float = 1e-5, exponent: float = 2.0, gamma: str = "initializer",
                    beta: str = "initializer", swap: bool = False, gamma_shape=(HIDDEN,), beta_shape=None,
                    mean_op: str = "ReduceMean", variance: str = "centred", restore: str | None = None) -> str:
    """LayerNorm of x written out, as torch's legacy exporter writes it; returns the output. casts:
    the values followed by a float32 Cast, of "x", "d", "square", "var", "std", "norm"; gamma, beta:
    as gamma_beta; swap: the operands of the Add and Mul nodes the other way round. mean_op:
    "GlobalAveragePool" for both means, as tf2onnx writes them before opset 18; restore: the means
    without keepdims, their dims put back (Builder.reduce_mean); variance: "centred"
    (mean of d^2), or "moments" (E[x^2] - mean^2, flax's, "moments-clipped" with a Max at 0);
    divide: "div", "reciprocal" or "folded" (Keras: x * (gamma / std) + (-mean * (gamma / std) + beta))."""
    x = b.cast(x) if "x" in casts else x
    mean = b.reduce_mean(x, "mean", axes, keepdims, opset, axes_as, mean_op, restore)
    d = b.op("Sub", [x, mean], "d")
    centred = b.cast(d) if "d" in casts else d
    if variance == "centred":
        sq = b.cast_if(square_of(b, centred, square, exponent), "square", casts)
        var = b.reduce_mean(sq, "var", var_axes or axes, keepdims, opset, axes_as, mean_op, restore)
    else:
        second = b.reduce_mean(square_of(b, x, square, exponent), "second_moment", var_axes or axes, keepdims, opset,
                               axes_as, mean_op, restore)
        var = b.op("Sub", [second, b.op("Mul", [mean, mean], "mean_squared")], "var")
        if variance == "moments-clipped":
            var = b.op("Max", [var, b.constant("zero", 0.0)], "var_clipped")
    var = b.cast_if(var, "var", casts)
    std = b.cast_if(root_of(b, var, epsilon, swap, "var_eps", "std"), "std", casts)
    if divide == "folded":
        return folded_gamma_beta(b, x, mean, b.op("Reciprocal", [std], "inverse_std"), gamma, beta, swap, gamma_shape,
                                 beta_shape)
    if divide == "div":
        norm = b.op("Div", [centred, std], "norm")
    else:
        inverse = b.op("Reciprocal", [std], "inverse_std")
        norm = b.op("Mul", [inverse, centred] if swap else [centred, inverse], "norm")
    norm = b.cast(norm) if "norm" in casts else norm
    return gamma_beta(b, norm, gamma, beta, swap, gamma_shape, beta_shape)


def write_rmsnorm(b: Builder, x: str, opset: int = 17, axes=(-1,), keepdims: int = 1, axes_as: str = "initializer",
                  square: str = "pow", invert: str = "div-one", casts=(), epsilon: float = 1e-6,
                  gamma: str = "initializer", swap: bool = False, exponent: float = 2.0, numerator: float = 1.0,
                  gamma_shape=(HIDDEN,), mean_op: str = "ReduceMean", epsilon_cast_like: bool = False,
                  restore: str | None = None) -> str:
    """RMSNorm of x written out (Llama, T5); returns the output. invert: "div-one" (x * (1 / root)),
    "reciprocal" (x * Reciprocal(root)), "div-x" (x / root) or "none" (x * root); casts: values
    followed by a float32 Cast, of "x", "square", "ms", "root", "inverse", "norm"; mean_op and
    epsilon_cast_like (epsilon CastLike x), restore (Builder.reduce_mean): as tf2onnx and jax2onnx
    write them."""
    x = b.cast(x) if "x" in casts else x
    sq = b.cast_if(square_of(b, x, square, exponent), "square", casts)
    ms = b.cast_if(b.reduce_mean(sq, "ms", axes, keepdims, opset, axes_as, mean_op, restore), "ms", casts)
    root = b.cast_if(root_of(b, ms, epsilon, swap, "ms_eps", "root", x if epsilon_cast_like else None), "root", casts)
    if invert == "div-x":
        norm = b.op("Div", [x, root], "norm")
    else:
        if invert == "div-one":
            inverse = b.op("Div", [b.constant("one", numerator), root], "inverse")
        elif invert == "reciprocal":
            inverse = b.op("Reciprocal", [root], "inverse")
        else:
            inverse = root
        inverse = b.cast(inverse) if "inverse" in casts else inverse
        norm = b.op("Mul", [inverse, x] if swap else [x, inverse], "norm")
    norm = b.cast(norm) if "norm" in casts else norm
    return gamma_beta(b, norm, gamma, "none", swap, gamma_shape)


# ---- composite ops (SpikingSoftmax, SpikingLayerNorm, SpikingRMSNorm) ---------------------------------

def composite_node(spiking: onnx.ModelProto, op_type: str) -> onnx.NodeProto:
    (node,) = [n for n in spiking.graph.node if n.op_type == op_type]
    return node


def composite_reference(spiking: onnx.ModelProto, module, x: np.ndarray, **arguments) -> np.ndarray:
    """The op's numpy reference run with the neurons the converter put on its node, and the axis,
    epsilon, gamma, beta the test expects (so a rule that passed the wrong ones fails)."""
    from onnx_snn.mbe.neuron import SlotTables

    node = composite_node(spiking, module.OP_TYPE)
    attributes = {a.name: oh.get_attribute_value(a) for a in node.attribute}
    tables = [SlotTables.from_attributes({k[len(n) + 1:]: v for k, v in attributes.items() if k.startswith(n + "_")})
              for n in module.NEURONS]
    if "channel_scale" in module.ATTRIBUTES:  # the per-channel ranges the converter chose
        arguments = {**arguments, "channel_scale": attributes["channel_scale"]}
    return module.reference(*tables, x, **arguments)[0]


def composite_bound(spiking: onnx.ModelProto, kind: str, x: np.ndarray, expected: np.ndarray,
                    **arguments) -> np.ndarray:
    """The error, per element, the converter's neurons on the spiking op allow against the original's
    `expected` (tests/error_bounds.py); `arguments` as for composite_reference (axis and epsilon, if
    not given, the node's; gamma, and LayerNorm's beta, the original's)."""
    from onnx_snn.ops import spiking_layernorm, spiking_rmsnorm, spiking_softmax

    module = {"softmax": spiking_softmax, "layernorm": spiking_layernorm, "rmsnorm": spiking_rmsnorm}[kind]
    attributes = {a.name: oh.get_attribute_value(a) for a in composite_node(spiking, module.OP_TYPE).attribute}
    axis = arguments.get("axis", attributes["axis"])
    if kind == "softmax":
        return softmax_bound(TIMESTEPS, x, expected, axis)
    beta = arguments.get("beta")
    return normalisation_bound(TIMESTEPS, x, expected, np.asarray(arguments["gamma"]),
                               None if beta is None else np.asarray(beta), axis,
                               arguments.get("epsilon", attributes["epsilon"]), kind == "layernorm",
                               attributes.get("channel_scale", [1.0]))


def assert_composite_conversion(model: onnx.ModelProto, kind: str, rule: str, x: np.ndarray, kept=(),
                                **arguments) -> None:
    """Convert a model y = op(x0) and check: one site of `rule`, nothing nonlinear left, the nodes
    (Constants aside) are the spiking op and the op types `kept` ahead of it, the spiking op computes
    its reference with the expected arguments (x0 is its input up to float32 Casts), and it is within
    the error its neurons allow (composite_bound) of the original."""
    from onnx_snn.ops import spiking_layernorm, spiking_rmsnorm, spiking_softmax

    module = {"softmax": spiking_softmax, "layernorm": spiking_layernorm, "rmsnorm": spiking_rmsnorm}[kind]
    spiking, report = convert(model, {"x0": x})
    assert report.replaced == {rule: 1}
    assert report.left == []
    assert [n.op_type for n in spiking.graph.node if n.op_type != "Constant"] == [*kept, module.OP_TYPE]
    actual = run_spiking(spiking, {"x0": x})[0]
    np.testing.assert_allclose(actual, composite_reference(spiking, module, x, **arguments), rtol=0, atol=1e-6)
    expected = run(model, {"x0": x})[0]
    error, bound = np.abs(actual - expected), composite_bound(spiking, kind, x, expected, **arguments)
    assert np.all(error <= bound), f"error {np.max(error):.3g}, {np.max(error / bound):.3g} x its bound"


# ---- identity encoders ---------------------------------------------------------------------------------

# the converter scales an encoder to RANGE_MARGIN x the calibrated magnitude, or, ranging each input
# feature, to LINEAR_CHANNEL_MARGIN x the widest feature's (each narrower feature decoded finer)
ENCODER_MARGIN = max(RANGE_MARGIN, LINEAR_CHANNEL_MARGIN)


def encoder_error(x: np.ndarray) -> float:
    """The largest error an identity encoder the converter calibrates on x (at T=16) makes on x."""
    return error_bounds.encoder_error(TIMESTEPS, x, ENCODER_MARGIN)
