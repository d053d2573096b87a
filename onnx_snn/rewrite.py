"""Finding the rules' sites in a graph, and building them."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper as oh
from onnx import numpy_helper

from onnx_snn.calibrate import Probe
from onnx_snn.graph import Graph
from onnx_snn.neurons import ENCODER, hidden_values
from onnx_snn.ops import DOMAIN, mbe_neuron
from onnx_snn.ops.common import layer_of, tag
from onnx_snn.precision import computed_in_float32, element_types, not_float
from onnx_snn.rules.base import MatchContext, NearMiss, Neurons, Rule, Site, node_name


def find_sites(graph: Graph, rules: tuple[Rule, ...],
               types: dict[str, int] | None = None) -> tuple[list[Site], list[NearMiss]]:
    """Every site of every rule in every scope (the main graph and the bodies of If, Loop and
    Scan), rules in order: a node one rule takes is not offered to the next. Near misses of nodes
    that a later rule takes after all are dropped. A site whose values are not all float32, float16
    or bfloat16 (`types`: precision.element_types) is a near miss, unless it reads and writes
    integers through quantizers of its own (Site.quantized)."""
    types = element_types(graph.model) if types is None else types
    scopes = graph.scopes()
    # names are unique over the model, so one set serves all scopes (a body may read an outer value)
    spike_encoded = {out for scope in scopes for n in scope.graph.node if n.domain == DOMAIN for out in n.output[:1]}
    contexts = [MatchContext(scope, spike_encoded) for scope in scopes]
    claimed: set[int] = set()
    sites: list[Site] = []
    near_misses: dict[int, NearMiss] = {}
    for rule in rules:
        for ctx in contexts:
            for node in ctx.graph.graph.node:
                if node.op_type not in rule.anchors or id(node) in claimed:
                    continue
                result = rule.match(ctx, node)
                if isinstance(result, Site) and not result.quantized:
                    problem = not_float(types, site_values(ctx.graph, result))
                    result = result if problem is None else NearMiss(rule.name, node_name(node), node.op_type, problem)
                if isinstance(result, NearMiss):
                    near_misses.setdefault(id(node), result)
                elif isinstance(result, Site) and not any(id(n) in claimed for n in result.nodes):
                    claimed.update(id(n) for n in result.nodes)
                    near_misses.pop(id(node), None)
                    if result.spike_output:
                        spike_encoded.add(result.spike_output)
                    sites.append(result)
    return sites, [m for key, m in near_misses.items() if key not in claimed]


def expand_fused(graph: Graph, rules: tuple[Rule, ...], types: dict[str, int]) -> tuple[list[Site], list[NearMiss]]:
    """Rewrite the fused ops the expansion rules match into the standard ops they compute (their
    values unchanged, integer ones too: ids, masks), in every scope; the graph is rewritten in
    place. Returns the expansions and the near misses (fused ops left, with why)."""
    sites: list[Site] = []
    near_misses: list[NearMiss] = []
    for scope in graph.scopes():
        ctx = MatchContext(scope, set(), types)
        for node in scope.graph.node:
            result = next((r for r in (rule.match(ctx, node) for rule in rules if node.op_type in rule.anchors)
                           if r is not None), None)
            if isinstance(result, Site):
                scope.replace(result.nodes, result.build(scope, None))
                sites.append(result)
            elif isinstance(result, NearMiss):
                near_misses.append(result)
    graph.apply()
    return sites, near_misses


def site_values(graph: Graph, site: Site) -> list[str]:
    """The values a site's replacement reads (but constants) and writes, and those it encodes."""
    inside = {id(n) for n in site.nodes}
    produced = [name for n in site.nodes for name in n.output if name]
    reads = [name for n in site.nodes for name in n.input if name and name not in produced and not graph.is_constant(name)]
    writes = [name for name in produced if name in graph.graph_outputs
              or any(id(c) not in inside for c in graph.consumers.get(name, []))]
    return list(dict.fromkeys([*reads, *writes, *(tensor for tensor, _ in site.encode)]))


# the kind a site's spiking nodes record (ops.common.KIND_KEY), where it is not the site's own
_SPIKING_KINDS = {"linear": "encoder", "product": "product-encoder"}


def build_sites(graph: Graph, sites: list[Site], neurons: Neurons, types: dict[str, int] | None = None) -> int:
    """Replace every site and add the identity encoders (one per tensor and scope, shared by all
    the layers it feeds there); returns the number of encoders. The graph is rewritten in place.
    Every new node computes in float32, with Casts from and to 16-bit values (`types`:
    precision.element_types)."""
    types = dict(element_types(graph.model) if types is None else types)  # encoded values are added
    hidden = hidden_values(graph, sites)  # before the rewrite: they are found from the original ops
    for site in sites:
        if site.build is not None:
            scope = graph.scope_of[id(site.anchor)]
            built = site.build(scope, neurons)
            for node in built:
                if node.domain == DOMAIN:
                    tag(node, _SPIKING_KINDS.get(site.kind, site.kind), layer_of(node_name(site.anchor)))
            scope.replace(site.nodes, computed_in_float32(scope, built, types))
    consumers: dict[tuple[int, str], list[onnx.NodeProto]] = defaultdict(list)
    products: set[tuple[int, str]] = set()  # encoders of a product's operands
    for site in sites:
        for tensor, consumer in site.encode:
            key = id(graph.scope_of[id(consumer)]), tensor
            if consumer not in consumers[key]:
                consumers[key].append(consumer)
            if site.kind == "product":
                products.add(key)
    # a range per channel where every site that encodes the tensor asked for one (probe.channel_axis)
    probes: dict[str, list[Probe]] = defaultdict(list)
    for site in sites:
        for probe in site.probes:
            if any(tensor == probe.tensor for tensor, _ in site.encode):
                probes[probe.tensor].append(probe)
    for key, users in consumers.items():
        tensor = key[1]
        scope = graph.scope_of[id(users[0])]
        encoded = scope.fresh_name(f"{tensor}/spikes")
        first = min(users, key=scope.position_of)
        name = scope.fresh_name(f"{node_name(first)}/encode_{tensor}")
        types[encoded] = types.get(tensor)  # the layers read it in the type they read the tensor in
        nodes = []
        function = "identity" if tensor in hidden else ENCODER
        asked = probes.get(tensor) or [Probe(tensor)]
        per_channel = all(p.channel_axis is not None for p in asked)
        scale, tables = neurons.linear_encoder(asked[0] if per_channel else Probe(tensor), function)
        scale_name = None
        if scale != [1.0]:
            scale_name = scope.fresh_name(f"{name}/channel_scale")
            nodes.append(oh.make_node("Constant", [], [scale_name], name=f"{scale_name}/constant",
                                      value=numpy_helper.from_array(np.asarray(scale, np.float32), scale_name)))
        encoder = mbe_neuron.make_node(tables, tensor, encoded, name=name, channel_scale=scale_name)
        tag(encoder, _SPIKING_KINDS["product" if key in products else "linear"], layer_of(node_name(first)))
        nodes.append(encoder)
        scope.add(computed_in_float32(scope, nodes, types), before=first)
        for user in users:
            scope.rewire(user, tensor, encoded)
    graph.apply()
    return len(consumers) + sum(site.encoders for site in sites)
