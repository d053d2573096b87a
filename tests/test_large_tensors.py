"""Tensors past the 32-bit limits: more than 2^31 bytes (CI) and more than 2^31 elements (slow), so
that an index or byte offset held in 32 bits anywhere in a kernel shows, as a crash or as outputs
that differ from the reference.

The input repeats a random block of 61 rows of 1000 values (61,000 elements: no power of two
divides it), so an element read from or written to a wrong place gives another value. The outputs
are compared bit for bit with the numpy reference on sampled blocks (the first and the last, those
around elements 2^29, 2^30 and 2^31, and random ones); the composite ops' spike totals (past 2^32 on
the larger tensor) are compared on the whole tensor: whole repeats of the block, then the rest. Inputs and
outputs are bound in place (IOBinding): the peak is the two tensors, 4.3 GB (CI) or 17.2 GB (slow),
and a test is skipped when the machine has less memory available."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import EDGE_VALUES, random_neuron
from onnx import TensorProto
from onnx import helper as oh
from spiking_op_helpers import assert_same, op_model

import onnx_snn
from onnx_snn.mbe.neuron import simulate
from onnx_snn.ops import mbe_neuron, spiking_layernorm, spiking_rmsnorm, spiking_softmax
from onnx_snn.ops.common import single_node_model

ROW = 1000  # values per row of the composite ops (the normalised or softmax axis)
BLOCK_ROWS = 61  # rows of the random block that the input repeats (a prime)
SAMPLE_ROWS = 16  # rows per sampled block
HEADROOM = 2 << 30  # bytes left to the rest of the machine beyond the two tensors


@dataclasses.dataclass
class Big:
    x: np.ndarray  # [rows, ROW]: the block repeated
    block: np.ndarray  # [BLOCK_ROWS, ROW]
    y: np.ndarray  # output buffer, x's shape

    def sampled_rows(self) -> list[slice]:
        """The first and last rows, the rows around elements 2^29, 2^30 and 2^31, four random ones."""
        rows = len(self.x)
        starts = [0, rows - SAMPLE_ROWS, *(min(e // ROW - SAMPLE_ROWS // 2, rows - SAMPLE_ROWS)
                                           for e in (1 << 29, 1 << 30, 1 << 31) if e < rows * ROW)]
        starts += np.random.default_rng(rows).integers(0, rows - SAMPLE_ROWS, 4).tolist()
        return [slice(s, s + SAMPLE_ROWS) for s in starts]

    def per_block_total(self, spikes_of) -> np.ndarray:
        """The spike totals of the whole input from those of the block: whole repeats, then the rest."""
        repeats, rest = divmod(len(self.x), BLOCK_ROWS)
        return repeats * spikes_of(self.block) + (spikes_of(self.block[:rest]) if rest else 0)


def available_memory() -> int:
    """Bytes the kernel can give without swapping (MemAvailable); 0 where /proc/meminfo is missing."""
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
    except OSError:
        return 0
    return int(fields["MemAvailable"].split()[0]) * 1024


@pytest.fixture(scope="module", params=[
    pytest.param(1 << 29, id="over 2^31 bytes"),
    pytest.param(1 << 31, id="over 2^31 elements", marks=pytest.mark.slow),
])
def big(request) -> Iterator[Big]:
    rows = (request.param + (1 << 20)) // ROW  # past the limit by 2^20 elements: many tasks start beyond it
    needed = 2 * rows * ROW * np.dtype(np.float32).itemsize
    available = available_memory()
    if available < needed + HEADROOM:
        pytest.skip(f"needs {needed / 2**30:.1f} GiB for input and output plus {HEADROOM / 2**30:.0f} GiB headroom; "
                    f"{available / 2**30:.1f} GiB available")
    rng = np.random.default_rng(0)
    block = rng.normal(0, 3, (BLOCK_ROWS, ROW)).astype(np.float32)
    block[np.arange(len(EDGE_VALUES)), rng.integers(0, ROW, len(EDGE_VALUES))] = EDGE_VALUES  # NaN rows too
    x = np.empty((rows, ROW), np.float32)
    for start in range(0, rows, BLOCK_ROWS):
        x[start:start + BLOCK_ROWS] = block[:rows - start]
    big = Big(x, block, np.empty_like(x))
    yield big
    big.x = big.y = None  # freed before the next size, even if a failed test's traceback keeps `big`


def run_in_place(model: onnx.ModelProto, feeds: dict[str, np.ndarray], y: np.ndarray) -> list[np.ndarray]:
    """Runs the model (library registered, 2 threads) on the feeds, writing output 0 into y: no copy of
    either big tensor. Returns the other outputs."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = onnx_snn.session(model, sess_options=options)
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_input(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
    first, *others = session.get_outputs()
    binding.bind_output(first.name, "cpu", 0, y.dtype, y.shape, y.ctypes.data)
    for output in others:
        binding.bind_output(output.name, "cpu")
    session.run_with_iobinding(binding)
    return [value.numpy() for value in binding.get_outputs()[1:]]


def _neurons(seed: int, count: int):
    # unsigned: a signed neuron runs the same indexing in a loop a few times slower
    return [random_neuron(seed + i, 3, 8).tables for i in range(count)]


def test_mbe_neuron(big: Big):
    (tables,) = _neurons(2, 1)
    node = mbe_neuron.make_node(tables, "x", "y", name="neuron")
    x, y = big.x.reshape(-1), big.y.reshape(-1)
    model = single_node_model(node, [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                              [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])])
    run_in_place(model, {"x": x}, y)
    for rows in big.sampled_rows():
        elements = slice(rows.start * ROW, rows.stop * ROW)
        assert_same(y[elements], simulate(tables, x[elements])[0], f"elements {elements.start}..{elements.stop}")


EXP2, RECIPROCAL = _neurons(11, 2)
LAYERNORM_NEURONS = _neurons(21, 3)
RMSNORM_NEURONS = _neurons(41, 2)
GAMMA = np.random.default_rng(1).normal(1, 0.5, ROW).astype(np.float32)
BETA = np.random.default_rng(2).normal(0, 0.5, ROW).astype(np.float32)
# op: (the node, its extra inputs, the reference on rows x)
COMPOSITES = {
    "SpikingSoftmax": (spiking_softmax.make_node(EXP2, RECIPROCAL, "x", "y", spikes="spikes", name="op"), {},
                       lambda x: spiking_softmax.reference(EXP2, RECIPROCAL, x)),
    "SpikingLayerNorm": (spiking_layernorm.make_node(*LAYERNORM_NEURONS, "x", "gamma", "beta", "y", spikes="spikes",
                                                     name="op"),
                         {"gamma": GAMMA, "beta": BETA},
                         lambda x: spiking_layernorm.reference(*LAYERNORM_NEURONS, x, GAMMA, BETA)),
    "SpikingRMSNorm": (spiking_rmsnorm.make_node(*RMSNORM_NEURONS, "x", "gamma", "y", spikes="spikes", name="op"),
                       {"gamma": GAMMA}, lambda x: spiking_rmsnorm.reference(*RMSNORM_NEURONS, x, GAMMA)),
}


@pytest.mark.parametrize("op", COMPOSITES)
def test_composite_op(big: Big, op: str):
    node, affine, reference = COMPOSITES[op]
    model = op_model(node, {"x": 2, **{name: 1 for name in affine}})
    (spikes,) = run_in_place(model, {"x": big.x, **affine}, big.y)
    for rows in big.sampled_rows():
        assert_same(big.y[rows], reference(big.x[rows])[0], f"{op} rows {rows.start}..{rows.stop}")
    expected = big.per_block_total(lambda x: reference(x)[1])
    assert big.x.size < 1 << 31 or expected.max() > 1 << 32  # the big tensor's totals pass 32 bits
    assert_same(spikes, expected, f"{op} spike totals")
