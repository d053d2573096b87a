"""A small index over an ONNX graph for pattern matching and surgery.

Rules walk parents by op type and input index and read constants (initializers or Constant nodes,
never external weights), as onnxruntime's transformers fusions do. Surgery is recorded and applied
once: matched nodes are removed, replacements inserted, and the node list sorted topologically
with a stable order, so every node a rule did not touch stays byte-identical and weights are never
loaded or copied.

Subgraphs (the bodies of If, Loop and Scan) are scopes of their own: `scopes()` is the main graph
and every body, each a Graph whose constant lookups reach the enclosing scopes. A node with bodies
counts as a consumer of every outer value they read, so no rule removes a value a body reads.
Names are unique over the whole model, as ONNX requires. Why this index is hand-written rather than
onnx-graphsurgeon's or onnx-ir's: docs/graph-layer.md.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from typing import Iterable, Iterator

import numpy as np
import onnx
from onnx import numpy_helper

# constants larger than this are weights, not the scalars and axes rules compare
_SMALL_CONSTANT = 1024
# ops removed when nothing reads them after a rewrite
_CONSTANT_OPS = ("Constant", "QuantizeLinear", "DequantizeLinear")


def named_bodies(node: onnx.NodeProto) -> list[tuple[str, onnx.GraphProto]]:
    """The subgraphs a node holds (an If's branches, a Loop's or Scan's body), by attribute name."""
    found = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            found.append((attr.name, attr.g))
        elif attr.type == onnx.AttributeProto.GRAPHS:
            found += [(f"{attr.name}[{i}]", g) for i, g in enumerate(attr.graphs)]
    return found


def bodies(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [body for _, body in named_bodies(node)]


def graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph, then every body in it (at any depth)."""
    yield graph
    for node in graph.node:
        for body in bodies(node):
            yield from graphs(body)


def every_node(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """The nodes of a graph and of every body in it."""
    for g in graphs(graph):
        yield from g.node


def outer_reads(node: onnx.NodeProto) -> set[str]:
    """The values a node's bodies read from outside them (at any depth)."""
    reads: set[str] = set()
    for body in bodies(node):
        defined = {v.name for v in body.input} | {t.name for t in body.initializer}
        defined.update(o for n in body.node for o in n.output)
        for inner in body.node:
            reads.update(name for name in (*inner.input, *outer_reads(inner)) if name and name not in defined)
        reads.update(v.name for v in body.output if v.name not in defined)
    return reads


def reads(node: onnx.NodeProto) -> list[str]:
    """Every value a node reads: its inputs, then what its bodies read from outside, once each."""
    outer = sorted(outer_reads(node)) if node.attribute else []
    return [name for name in dict.fromkeys([*node.input, *outer]) if name]


def node_name(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else node.op_type)


def unique_name(base: str, used: set[str]) -> str:
    """base, or base_1, base_2, ...: the first not in `used`, which it joins."""
    name, i = base, 0
    while name in used:
        i += 1
        name = f"{base}_{i}"
    used.add(name)
    return name


class Graph:
    def __init__(self, model: onnx.ModelProto, graph: onnx.GraphProto | None = None, outer: Graph | None = None,
                 where: str = ""):
        self.model = model
        self.graph = model.graph if graph is None else graph
        self.outer = outer
        self.where = where  # '' for the main graph, else the path to the body, e.g. 'If_0 then_branch: '
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        self.position: dict[int, int] = {}
        self.scope_of: dict[int, Graph] = {} if outer is None else outer.scope_of  # node id -> its scope
        inner: list[tuple[str, onnx.GraphProto]] = []
        for i, node in enumerate(self.graph.node):
            self.position[id(node)] = i
            self.scope_of[id(node)] = self
            for name in node.output:
                if name:
                    self.producer[name] = node
            if node.attribute:
                inner += [(f"{where}{node_name(node)} {attribute}: ", body) for attribute, body in named_bodies(node)]
            for name in reads(node):  # Mul(x, x) reads x once; an If reads what its branches read
                self.consumers[name].append(node)
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.graph_inputs = {v.name for v in self.graph.input}
        self.graph_outputs = {v.name for v in self.graph.output}
        # one set of names for the whole model: a fresh name is fresh in every scope
        self._names = outer._names if outer is not None else set()
        self._names.update(self.producer, self.initializers, self.graph_inputs)
        self.subgraphs = [Graph(model, body, self, path) for path, body in inner]
        self._removed: set[int] = set()
        self._added: list[onnx.NodeProto] = []
        self._ranks: dict[str, int] | None = None  # by shape inference, on first use

    def scopes(self) -> list[Graph]:
        """This graph, then every body in it, outer before inner."""
        return [self, *(scope for sub in self.subgraphs for scope in sub.scopes())]

    def _defines(self, name: str) -> bool:
        return name in self.producer or name in self.initializers or name in self.graph_inputs

    # -- reading ----------------------------------------------------------------------------------
    def constant(self, name: str) -> np.ndarray | None:
        """The value of a small constant tensor (initializer or Constant node), else None."""
        if self.outer is not None and not self._defines(name):
            return self.outer.constant(name)
        tensor = self.initializers.get(name)
        if tensor is None:
            node = self.producer.get(name)
            if node is not None and node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.domain in ("", "ai.onnx"):
                return self._quantized_constant(node)
            if node is None or node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
                return None
            for attr in node.attribute:
                if attr.name == "value":
                    tensor = attr.t
                elif attr.name in ("value_float", "value_int"):
                    return np.array(onnx.helper.get_attribute_value(attr))
                elif attr.name in ("value_floats", "value_ints"):
                    return np.array(onnx.helper.get_attribute_value(attr))
            if tensor is None:
                return None
        if tensor.data_location == onnx.TensorProto.EXTERNAL or np.prod(tensor.dims, dtype=np.int64) > _SMALL_CONSTANT:
            return None
        return numpy_helper.to_array(tensor)

    def _quantized_constant(self, node: onnx.NodeProto) -> np.ndarray | None:
        """A small constant quantized or dequantized with a per-tensor scale (a static QDQ model
        writes a pattern's 0.5 as DequantizeLinear(QuantizeLinear(0.5))), as onnxruntime computes it."""
        x, scale = self.constant(node.input[0]), self.constant(node.input[1])
        zero = self.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if x is None or scale is None or scale.size != 1 or (zero is not None and zero.size != 1):
            return None
        zero = np.zeros((), np.uint8) if zero is None else zero.reshape(())
        if node.op_type == "DequantizeLinear":
            return ((x.astype(np.float32) - zero.astype(np.float32)) * scale.reshape(())).astype(scale.dtype)
        info = np.iinfo(zero.dtype)
        return np.clip(np.rint(x / scale.reshape(())) + zero, info.min, info.max).astype(zero.dtype)

    def constant_shape(self, name: str) -> tuple[int, ...] | None:
        """The shape of an initializer or of a Constant node's output (without reading its value)."""
        if self.outer is not None and not self._defines(name):
            return self.outer.constant_shape(name)
        tensor = self.initializers.get(name)
        if tensor is not None:
            return tuple(tensor.dims)
        node = self.producer.get(name)
        if node is None or node.op_type != "Constant":
            return None
        for attr in node.attribute:
            if attr.name == "value":
                return tuple(attr.t.dims)
            if attr.name in ("value_float", "value_int"):
                return ()
            if attr.name in ("value_floats", "value_ints"):
                return (len(attr.floats) + len(attr.ints),)
        return None

    def declared_rank(self, name: str) -> int | None:
        """The rank of a value as the model declares it (graph input, output or value_info), if it does."""
        for info in (*self.graph.input, *self.graph.output, *self.graph.value_info):
            if info.name == name and info.type.tensor_type.HasField("shape"):
                return len(info.type.tensor_type.shape.dim)
        return None if self.outer is None else self.outer.declared_rank(name)

    def rank(self, name: str) -> int | None:
        """The rank of a value of the main graph as declared or as onnx shape inference finds it
        (run once, when first asked: exporters such as tf2onnx declare no inner shapes)."""
        declared = self.declared_rank(name)
        if declared is not None or self.outer is not None:
            return declared
        if self._ranks is None:
            from onnx_snn.precision import ranks

            self._ranks = ranks(self.model)
        return self._ranks.get(name)

    def defining_node(self, name: str) -> onnx.NodeProto | None:
        """The node producing `name`, in this scope or an enclosing one."""
        node = self.producer.get(name)
        if node is None and self.outer is not None and not self._defines(name):
            return self.outer.defining_node(name)
        return node

    def is_constant(self, name: str) -> bool:
        """True for weights and constants: initializers (not overridable inputs) and Constant outputs."""
        if self.outer is not None and not self._defines(name):
            return self.outer.is_constant(name)
        if name in self.initializers:
            return name not in self.graph_inputs
        node = self.producer.get(name)
        return node is not None and node.op_type == "Constant"

    def scalar(self, name: str) -> float | None:
        value = self.constant(name)
        if value is None or value.size != 1:
            return None
        return float(value.reshape(()))

    def parent(self, node: onnx.NodeProto, index: int, op_type: str | None = None) -> onnx.NodeProto | None:
        if index >= len(node.input) or not node.input[index]:
            return None
        parent = self.producer.get(node.input[index])
        if parent is None or (op_type is not None and parent.op_type != op_type):
            return None
        return parent

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        """The single node reading `name`, if no other node and no graph output does."""
        users = self.consumers.get(name, [])
        if len(users) != 1 or name in self.graph_outputs:
            return None
        return users[0]

    def inner_values_private(self, nodes: Iterable[onnx.NodeProto], output: str) -> str | None:
        """None if every value the nodes produce, but `output`, is read only inside them; else the
        name of a value also used elsewhere (then the pattern cannot be removed)."""
        inside = {id(n) for n in nodes}
        for node in nodes:
            for name in node.output:
                if name == output or not name:
                    continue
                if name in self.graph_outputs or any(id(c) not in inside for c in self.consumers.get(name, [])):
                    return name
        return None

    def attribute(self, node: onnx.NodeProto, name: str, default=None):
        for attr in node.attribute:
            if attr.name == name:
                return onnx.helper.get_attribute_value(attr)
        return default

    def fresh_name(self, base: str) -> str:
        return unique_name(base, self._names)

    def removed(self, node: onnx.NodeProto) -> bool:
        return id(node) in self._removed

    # -- surgery ----------------------------------------------------------------------------------
    def replace(self, nodes: list[onnx.NodeProto], new_nodes: Iterable[onnx.NodeProto]) -> None:
        """Remove `nodes`; `new_nodes` take the place of the last of them."""
        self._removed.update(id(n) for n in nodes)
        self.add(new_nodes, before=max(nodes, key=self.position_of))

    def add(self, new_nodes: Iterable[onnx.NodeProto], *, before: onnx.NodeProto) -> None:
        """Insert `new_nodes` at the place of node `before` (ahead of it)."""
        place = self.position_of(before)
        for node in new_nodes:
            self._added.append((place, node))
            self._names.update(node.output)

    def position_of(self, node: onnx.NodeProto) -> int:
        return self.position[id(node)]

    def rewire(self, node: onnx.NodeProto, old: str, new: str) -> None:
        """Make `node` read `new` where it read `old` (the node keeps its place and everything else)."""
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new

    def apply(self) -> None:
        """Write the recorded surgery of every scope into the model (inner scopes first, so an outer
        constant only a removed inner node read goes too), then index the model again."""
        for scope in reversed(self.scopes()):
            scope._apply_here()
        self.__init__(self.model)

    def _apply_here(self) -> None:
        """This scope's surgery, sorted topologically in a stable order: kept nodes keep their
        relative order, new nodes sit where they were placed."""
        keyed = [((i, 1), n) for i, n in enumerate(self.graph.node) if id(n) not in self._removed]
        keyed += [((place, 0), n) for place, n in self._added]
        keyed.sort(key=lambda item: item[0])
        nodes = [n for _, n in keyed]
        produced_by = {name for node in nodes for name in node.output if name}
        # values produced by no node here (inputs, initializers, outer scopes) are available
        missing = [0] * len(nodes)
        waiting: dict[str, list[int]] = defaultdict(list)
        for i, node in enumerate(nodes):
            for name in reads(node):
                if name in produced_by:
                    waiting[name].append(i)
                    missing[i] += 1
        ready = [i for i, count in enumerate(missing) if count == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            i = heapq.heappop(ready)
            order.append(nodes[i])
            for name in nodes[i].output:
                for j in waiting.pop(name, []):
                    missing[j] -= 1
                    if missing[j] == 0:
                        heapq.heappush(ready, j)
        if len(order) != len(nodes):
            raise ValueError("the rewritten graph has a cycle")
        # constants only the removed nodes read (a GELU's sqrt(2), a LayerNorm's epsilon, and in a
        # static QDQ model the QuantizeLinear -> DequantizeLinear of such a constant) go too
        while True:
            used = self._used_names(order)
            kept = [n for n in order if not (n.op_type in _CONSTANT_OPS and n.domain in ("", "ai.onnx")
                                             and not any(o in used for o in n.output))]
            if len(kept) == len(order):
                break
            order = kept
        del self.graph.node[:]
        self.graph.node.extend(order)
        kept = [t for t in self.graph.initializer if t.name in used or t.name in self.graph_inputs]
        if len(kept) != len(self.graph.initializer):
            del self.graph.initializer[:]
            self.graph.initializer.extend(kept)

    def _used_names(self, nodes: list[onnx.NodeProto]) -> set[str]:
        """Every value read by the nodes (and their subgraphs) or by the graph's outputs."""
        used = set(self.graph_outputs)
        stack = list(nodes)
        while stack:
            node = stack.pop()
            used.update(node.input)
            for body in bodies(node):
                stack.extend(body.node)
                used.update(v.name for v in body.output)
        return used
