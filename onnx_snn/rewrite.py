"""Finding the rules' sites in a graph, and building them."""

from __future__ import annotations

from collections import defaultdict

import onnx

from onnx_snn.graph import Graph
from onnx_snn.ops import DOMAIN, mbe_neuron
from onnx_snn.rules.base import MatchContext, NearMiss, Neurons, Rule, Site, node_name


def find_sites(graph: Graph, rules: tuple[Rule, ...]) -> tuple[list[Site], list[NearMiss]]:
    """Every site of every rule, rules in order: a node one rule takes is not offered to the next.
    Near misses of nodes that a later rule takes after all are dropped."""
    ctx = MatchContext(graph, {out for n in graph.graph.node if n.domain == DOMAIN for out in n.output[:1]})
    claimed: set[int] = set()
    sites: list[Site] = []
    near_misses: dict[int, NearMiss] = {}
    for rule in rules:
        for node in graph.graph.node:
            if node.op_type not in rule.anchors or id(node) in claimed:
                continue
            result = rule.match(ctx, node)
            if isinstance(result, NearMiss):
                near_misses.setdefault(id(node), result)
            elif isinstance(result, Site) and not any(id(n) in claimed for n in result.nodes):
                claimed.update(id(n) for n in result.nodes)
                near_misses.pop(id(node), None)
                if result.spike_output:
                    ctx.spike_encoded.add(result.spike_output)
                sites.append(result)
    return sites, [m for key, m in near_misses.items() if key not in claimed]


def build_sites(graph: Graph, sites: list[Site], neurons: Neurons) -> int:
    """Replace every site and add the identity encoders (one per tensor, shared by all the layers
    it feeds); returns the number of encoders. The graph is rewritten in place."""
    for site in sites:
        if site.build is not None:
            graph.replace(site.nodes, site.build(graph, neurons))
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for site in sites:
        for tensor, consumer in site.encode:
            if consumer not in consumers[tensor]:
                consumers[tensor].append(consumer)
    for tensor, users in consumers.items():
        encoded = graph.fresh_name(f"{tensor}/spikes")
        first = min(users, key=graph.position_of)
        name = graph.fresh_name(f"{node_name(first)}/encode_{tensor}")
        graph.add([mbe_neuron.make_node(neurons.for_tensor("identity", tensor), tensor, encoded, name=name)], before=first)
        for user in users:
            graph.rewire(user, tensor, encoded)
    graph.apply()
    return len(consumers) + sum(site.encoders for site in sites)
