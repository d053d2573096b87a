"""Fuzzing the rules with hypothesis: random small graphs (fuzz_graphs.py) holding every supported
pattern in its forms and its near misses, in context, converted at high T (16, 24).

- A near miss is never rewritten by its rule: no site of the rule takes any of its nodes, every node
  no rule takes is in the converted graph unchanged, and where the rule promises a reason the
  report lists the node as a near miss.
- A genuine pattern is rewritten (one site of its rule, ending at the pattern's output) and every
  spiking op of the converted model, run in onnxruntime with the custom-op library on the original's
  values of its inputs, stays within the error its neurons allow (below); every linear layer and
  product is spike-driven (its products in hybrid mode).
- Conversion is deterministic: twice here, and once in another process with another hash seed,
  give byte-identical models.

The error bounds, per element, are the shipped presets' error carried through each op (tests/error_bounds.py).
Hypothesis settings: tests/conftest.py (HYPOTHESIS_PROFILE=long for a long run).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import pytest
from error_bounds import activation_bound, encoder_error, normalisation_bound, softmax_bound
from fuzz_graphs import NEAR_MISSES, PATTERNS, Case, cases
from hypothesis import event, given, settings
from hypothesis import strategies as st
from onnx import helper as oh
from onnx import numpy_helper
from rule_kit import run

import onnx_snn
from onnx_snn.graph import Graph
from onnx_snn.neurons import LINEAR_CHANNEL_MARGIN
from onnx_snn.ops import DOMAIN
from onnx_snn.pipeline import convert_with_report
from onnx_snn.rewrite import find_sites
from onnx_snn.rules import rule_set
from onnx_snn.rules.base import is_weight, node_name

# ---- running the spiking ops on the original's values ------------------------------------------------

def original_values(model: onnx.ModelProto, feeds: dict, names: list[str]) -> dict[str, np.ndarray]:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    return dict(zip(names, run(probe, feeds)))


def spiking_ops_on_original_values(case: Case, spiking: onnx.ModelProto):
    """Every spiking node of the converted model, each fed the original's values of its inputs: (node,
    its output, the original's values by name). Nodes the rewrite added to feed them (a weight
    reshaped for one) run too."""
    weights = {t.name: t for t in spiking.graph.initializer}
    computed = {name for n in case.model.graph.node for name in n.output} | {"x0"}
    added = [n for n in spiking.graph.node if n.domain != DOMAIN and n.output[0] not in computed]
    nodes = [n for n in spiking.graph.node if n.domain == DOMAIN]
    if not nodes:
        return [], weights
    made = [name for n in added for name in n.output]
    reads = list(dict.fromkeys(i for n in nodes + added for i in n.input if i and i not in weights and i not in made))
    assert set(reads) <= computed, f"spiking ops read values the original does not have: {set(reads) - computed}"
    writes = [n.output[0] for n in nodes]
    values = original_values(case.model, case.feeds, list(dict.fromkeys(reads + [w for w in writes if w in computed])))
    forced = []
    for node in added + nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [f"{i}|original" if i in reads else i for i in node.input]
        del copy.output[1:]
        forced.append(copy)
    used = {i for n in added + nodes for i in n.input}
    inputs = [oh.make_tensor_value_info(f"{i}|original", onnx.TensorProto.FLOAT, None) for i in reads]
    outputs = [onnx.ValueInfoProto(name=w) for w in writes + made]
    graph = oh.make_graph(forced, "forced", inputs, outputs, [weights[w] for w in weights if w in used])
    model = oh.make_model(graph, opset_imports=spiking.opset_import, functions=spiking.functions)
    model.ir_version = spiking.ir_version
    outputs = onnx_snn.session(model).run(writes + made, {f"{i}|original": values[i] for i in reads})
    values |= dict(zip(made, outputs[len(writes):]))
    return [(node, output, values) for node, output in zip(nodes, outputs)], weights


def assert_within_the_neurons_error(case: Case, spiking: onnx.ModelProto, kinds: dict[str, str]) -> None:
    """Each spiking op against the original, on the original's values of its inputs; `kinds`: the
    function of each activation neuron, by output."""
    results, weights = spiking_ops_on_original_values(case, spiking)
    for node, actual, values in results:
        x = values[node.input[0]]
        attributes = {a.name: oh.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "MBENeuron" and node.output[0] not in values:
            # an encoder (the converter's default: at T)
            expected, bound = x, encoder_error(case.timesteps, x, LINEAR_CHANNEL_MARGIN)
        elif node.op_type == "MBENeuron":
            expected = values[node.output[0]]
            bound = activation_bound(kinds[node.output[0]], case.timesteps, x, expected)
        elif node.op_type == "SpikingSoftmax":
            expected = values[node.output[0]]
            bound = softmax_bound(case.timesteps, x, expected, attributes["axis"])
        else:
            def tensor(name):
                return numpy_helper.to_array(weights[name]) if name in weights else values[name]

            layernorm = node.op_type == "SpikingLayerNorm"
            beta = tensor(node.input[2]) if layernorm and len(node.input) > 2 and node.input[2] else None
            expected = values[node.output[0]]
            bound = normalisation_bound(case.timesteps, x, expected, tensor(node.input[1]), beta, attributes["axis"],
                                        attributes["epsilon"], centred=layernorm,
                                        channel_scale=attributes.get("channel_scale", [1.0]))
        error = np.abs(actual.astype(np.float64) - expected)
        finite = np.isfinite(expected)
        assert np.array_equal(np.isfinite(actual), finite), f"{node.name}: not finite where the original is"
        bound = np.broadcast_to(bound, error.shape)
        worst = np.unravel_index(np.argmax(error - bound, axis=None), error.shape) if error.size else None
        assert np.all(error[finite] <= bound[finite]), (
            f"{node.op_type} {node.name}: error {error[worst]:.3g} > bound {bound[worst]:.3g} at {worst} "
            f"(input {x[worst] if x.shape == error.shape else '...'}, original {expected[worst]:.6g})")


# ---- the properties ----------------------------------------------------------------------------------------

def convert(case: Case) -> tuple[onnx.ModelProto, object]:
    return convert_with_report(case.model, timesteps=case.timesteps, calibration=case.feeds, hybrid=case.hybrid,
                               check=False)


def assert_untouched_nodes_are_unchanged(original: onnx.ModelProto, spiking: onnx.ModelProto, claimed: set[str]):
    """Every node no site took is in the converted graph as it was (but for reading an encoder's output
    where it read the encoded value), and the converted graph has no other node but spiking ops and
    nodes that only feed them (a weight reshaped for one)."""
    computed = {name for n in original.graph.node for name in n.output}
    encoded = {n.output[0]: n.input[0] for n in spiking.graph.node
               if n.domain == DOMAIN and n.op_type == "MBENeuron" and n.output[0] not in computed}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in spiking.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    before = {n.SerializeToString() for n in original.graph.node}
    after = set()
    for node in spiking.graph.node:
        if node.domain == DOMAIN:
            continue
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [encoded.get(i, i) for i in node.input]
        if copy.SerializeToString() in before:
            after.add(copy.SerializeToString())
            continue
        users = [r for name in node.output for r in readers.get(name, [])]
        assert users and all(r.domain == DOMAIN for r in users), f"{node_name(node)} ({node.op_type}) is new"
    used = {i for n in spiking.graph.node for i in n.input}
    for node in original.graph.node:
        if node_name(node) in claimed or (node.op_type == "Constant" and node.output[0] not in used):
            continue
        assert node.SerializeToString() in after, f"{node_name(node)} ({node.op_type}) was changed or removed"


def check(case: Case) -> None:
    rules = rule_set(case.hybrid)
    names = {r.name for r in rules}
    sites, _ = find_sites(Graph(onnx.ModelProto.FromString(case.model.SerializeToString())), rules)
    owner = {node_name(n): site for site in sites for n in site.nodes}  # the nodes sites replace
    owner |= {node_name(site.anchor): site for site in sites if not site.nodes}  # and the layers encoder sites feed
    kinds = {site.spike_output: site.kind for site in sites if site.spike_output}
    spiking, report = convert(case)
    left = {e["node"]: e["reason"] for e in report.left}
    for instance in case.instances:
        event(f"{instance.pattern}: {instance.near_miss.split()[0] if instance.near_miss else 'genuine'}")
        where = f"{instance.pattern} {instance.near_miss or ''} (anchor {instance.anchor})"
        taken = [owner[n] for n in instance.nodes if n in owner and owner[n].rule == instance.rule]
        if instance.near_miss:
            assert not taken, f"near miss rewritten: {where}"
            if instance.reported:
                assert left.get(instance.anchor, "").startswith("near miss: "), f"near miss not reported: {where}"
        elif instance.rule in names and instance.rule != "linear-input":  # a layer fed by spikes needs no encoder
            sites_of_rule = {id(s): s for s in taken}
            assert len(sites_of_rule) == 1, f"genuine pattern not rewritten as one site: {where}"
            (site,) = sites_of_rule.values()
            assert node_name(site.anchor) == instance.anchor and (
                site.build is None or (instance.site_output or instance.y) in {n.output[0] for n in site.nodes}
            ), f"wrong site for {where}"
            assert instance.function in (None, site.kind), f"{where} rewritten as {site.kind}"
            assert not {n for n in instance.nodes if n in left}, f"nonlinear op left in {where}: {left}"
    assert_untouched_nodes_are_unchanged(case.model, spiking, {node_name(n) for site in sites for n in site.nodes})
    if not case.hybrid:
        assert report.macs_spike_driven == report.macs_total, "a linear layer or product is not spike-driven"
    converted = Graph(spiking)
    for node in converted.graph.node:
        if node.op_type == "MatMul" and not any(is_weight(converted, name) for name in node.input):
            producers = [converted.producer.get(name) for name in node.input]
            assert all(p is not None and p.op_type == "MBENeuron" for p in producers), "a product is not spike-driven"
    assert_within_the_neurons_error(case, spiking, kinds)
    onnx_snn.session(spiking).run(None, case.feeds)  # the whole converted model runs


@pytest.mark.parametrize("pattern", PATTERNS)
@given(data=st.data())
def test_genuine_patterns_are_rewritten_within_the_neurons_error(pattern, data):
    check(data.draw(cases(pattern, near_miss=False), label="case"))


@pytest.mark.parametrize("pattern", sorted(NEAR_MISSES))
@given(data=st.data())
def test_near_misses_are_never_rewritten(pattern, data):
    check(data.draw(cases(pattern, near_miss=True), label="case"))


# converts the pickled (model bytes, options) requests it reads, answering each with the model's bytes
CONVERTER = """
import pickle, sys
import onnx
from onnx_snn.pipeline import convert_with_report
while True:
    try:
        model, options = pickle.load(sys.stdin.buffer)
    except EOFError:
        break
    spiking, _ = convert_with_report(onnx.ModelProto.FromString(model), check=False, **options)
    pickle.dump(spiking.SerializeToString(), sys.stdout.buffer)
    sys.stdout.buffer.flush()
"""


@pytest.fixture(scope="module")
def convert_elsewhere():
    """Conversion in two other processes, with string hash seeds 1 and 2 (so other orders of sets and
    hash-keyed containers of strings), run from a neutral folder so they import the installed package."""
    processes = [subprocess.Popen([sys.executable, "-c", CONVERTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  cwd=tempfile.gettempdir(), env={**os.environ, "PYTHONHASHSEED": seed})
                 for seed in ("1", "2")]

    def convert(case: Case) -> list[bytes]:
        options = dict(timesteps=case.timesteps, calibration=case.feeds, hybrid=case.hybrid)
        for process in processes:
            pickle.dump((case.model.SerializeToString(), options), process.stdin)
            process.stdin.flush()
        return [pickle.load(process.stdout) for process in processes]

    yield convert
    for process in processes:
        process.stdin.close()
        process.wait(timeout=60)


@settings(max_examples=3 * settings.default.max_examples)  # cheap examples; orders differ by chance
@given(case=st.sampled_from(PATTERNS).flatmap(lambda pattern: cases(pattern, near_miss=False))
       | st.sampled_from(sorted(NEAR_MISSES)).flatmap(lambda pattern: cases(pattern, near_miss=True)))
def test_conversion_is_deterministic(convert_elsewhere, case):
    first, second = (convert(case)[0].SerializeToString() for _ in range(2))
    assert first == second
    assert convert_elsewhere(case) == [first, first]
