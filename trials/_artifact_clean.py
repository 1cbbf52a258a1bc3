"""What the deployable ONNX file holds: the graph, its weights and shape information, and none of
the exporter's debug metadata.

torch's dynamo exporter annotates every node with ``metadata_props`` (``namespace``,
``pkg.torch.onnx.stack_trace``, ``fx_node``, ``class_hierarchy``, ``name_scopes``), every value
with its origin, and the graph with the exported program's signature. On small models that is a
third of the file: it inflated ``size_bytes`` and diluted every size ratio. ``strip_debug_metadata``
removes it; ``restore_weight_names`` first gives the weights the exporter folded into new
tensors (``val_29``: a GRU's weights stacked, an attention ``in_proj_weight`` transposed) the
names of the model parameters they came from, which only that metadata records.
``fixed_width_tensors`` stores small integer tensors (ONNX Runtime's int8 zero points) as raw
bytes instead of protobuf varints, so that a file's size depends on its structure, not on the
values calibration gave them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass

import onnx
from onnx import numpy_helper

# Model- and graph-level metadata keys the exporters write (torch's and onnxscript's).
_DEBUG_PREFIXES = ("pkg.", "namespace")
_FOLDED_FROM = "pkg.onnxscript.optimizer.folded_from"


@dataclass(frozen=True)
class StripSummary:
    """What ``strip_debug_metadata`` removed: metadata entries and doc strings."""

    metadata_props: int
    doc_strings: int

    @property
    def changed(self) -> bool:
        return bool(self.metadata_props or self.doc_strings)


def strip_debug_metadata(model: onnx.ModelProto) -> StripSummary:
    """Remove, in place, every doc string and every ``metadata_props`` entry of nodes, values,
    initializers, graph inputs/outputs and functions (subgraphs included), and the graph's and
    model's metadata entries whose key an exporter writes (``pkg.*``, ``namespace``). Names,
    opsets, shapes and weights are untouched, so ONNX Runtime computes the same outputs."""
    props = docs = 0
    if model.doc_string:
        model.doc_string = ""
        docs += 1
    props += _drop_debug_keys(model.metadata_props)
    for graph in _graphs(model):
        props += _drop_debug_keys(graph.metadata_props)
        if graph.doc_string:
            graph.doc_string = ""
            docs += 1
        holders = [*graph.node, *graph.value_info, *graph.input, *graph.output, *graph.initializer]
        for item in holders:
            props += len(item.metadata_props)
            del item.metadata_props[:]
            if item.doc_string:
                item.doc_string = ""
                docs += 1
    for function in model.functions:
        for node in function.node:
            props += len(node.metadata_props)
            del node.metadata_props[:]
            if node.doc_string:
                node.doc_string = ""
                docs += 1
        if function.doc_string:
            function.doc_string = ""
            docs += 1
    return StripSummary(metadata_props=props, doc_strings=docs)


# Element types ONNX stores in ``int32_data`` as protobuf varints: 1 to 10 bytes per value,
# depending on the value (a uint8 zero point takes 1 byte below 128, 2 from 128; a negative
# int8 takes 10).
_VARINT_TYPES = {
    onnx.TensorProto.INT8,
    onnx.TensorProto.UINT8,
    onnx.TensorProto.INT16,
    onnx.TensorProto.UINT16,
    onnx.TensorProto.INT32,
}


def fixed_width_tensors(model: onnx.ModelProto) -> int:
    """Rewrite, in place, every initializer of a varint-encoded integer type (int8/uint8/int16/
    uint16/int32) held in ``int32_data`` as ``raw_data`` (fixed width, little-endian), subgraphs
    included; return how many. Values, names, types and shapes are unchanged. Without it an
    int8 file's size moved by a byte whenever calibration moved a zero point across 128, so
    two files of the same structure differed in size (and the early measurement of issue 13 did
    not match the final one)."""
    count = 0
    for graph in _graphs(model):
        for index, tensor in enumerate(graph.initializer):
            if tensor.data_type in _VARINT_TYPES and len(tensor.int32_data):
                fixed = numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name)
                graph.initializer[index].CopyFrom(fixed)
                count += 1
    return count


def restore_weight_names(model: onnx.ModelProto, param_names: Collection[str]) -> int:
    """Rename, in place, each initializer the exporter folded from model parameters (its
    ``folded_from`` metadata lists them) to those parameters' names joined by ``+``
    (``gru.weight_ih_l0``; ``gru.bias_hh_l0+gru.bias_ih_l0``), unless that name is taken.
    Call before ``strip_debug_metadata``; returns how many were renamed. Initializers named
    after a parameter already keep their name."""
    params = set(param_names)
    graph = model.graph
    taken = {t.name for t in graph.initializer} | {
        out for g in _graphs(model) for node in g.node for out in node.output
    }
    taken |= {i.name for i in graph.input} | {o.name for o in graph.output}
    initializers = {t.name for t in graph.initializer}
    renames: dict[str, str] = {}
    for value in graph.value_info:
        if value.name not in initializers or value.name in params:
            continue
        folded = next((p.value for p in value.metadata_props if p.key == _FOLDED_FROM), None)
        sources = sorted(s for s in _listed(folded) if s in params) if folded else []
        name = "+".join(sources)
        if sources and name not in taken:
            renames[value.name] = name
            taken.add(name)
    if renames:
        _rename(model, renames)
    return len(renames)


def _listed(text: str) -> list[str]:
    """The names of a ``folded_from`` entry (a Python list literal of strings)."""
    inner = text.strip().removeprefix("[").removesuffix("]")
    return [part.strip().strip("'\"") for part in inner.split(",") if part.strip()]


def _rename(model: onnx.ModelProto, renames: dict[str, str]) -> None:
    for graph in _graphs(model):
        for tensor in graph.initializer:
            tensor.name = renames.get(tensor.name, tensor.name)
        for value in [*graph.value_info, *graph.input, *graph.output]:
            value.name = renames.get(value.name, value.name)
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name in renames:
                    node.input[i] = renames[name]


def _graphs(model: onnx.ModelProto) -> Iterator[onnx.GraphProto]:
    """The main graph and every subgraph (If/Loop/Scan bodies), depth first."""
    stack = [model.graph]
    while stack:
        graph = stack.pop()
        yield graph
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    stack.append(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(attr.graphs)


def _drop_debug_keys(props: object) -> int:
    """Remove the entries of a repeated ``StringStringEntryProto`` whose key an exporter
    writes; return how many."""
    entries = list(props)  # type: ignore[call-overload]
    keep = [e for e in entries if not e.key.startswith(_DEBUG_PREFIXES)]
    if len(keep) == len(entries):
        return 0
    kept = [(e.key, e.value) for e in keep]
    del props[:]  # type: ignore[attr-defined]
    for key, value in kept:
        props.add(key=key, value=value)  # type: ignore[attr-defined]
    return len(entries) - len(keep)
