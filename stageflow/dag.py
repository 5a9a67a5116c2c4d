"""The flow's DAG, read from flow.py itself by compiling its workflow with flytekit.

There is no second, hand-written list of stages and edges: the runner, the compose harness and the
tests all take the graph that Flyte (and so Domino) will run. Nothing here knows the flow's names: the
workflow is the one `@workflow` in the file (or the one asked for by name), and its outputs are whatever
it returns, each with the file format its type declares.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from importlib import metadata
from typing import Annotated, Any, get_args, get_origin

from stageflow.runtime import contract
from stageflow import registry
from stageflow.registry import ROOT, Stage

FLOW_FILE = ROOT / "flow.py"
DAG_CACHE = ROOT / ".cache" / "dag"


class FlowError(Exception):
    """flow.py cannot give a DAG: no workflow, an ambiguous one, or a stage the registry lacks."""


@dataclass(frozen=True)
class Source:
    """Where an input's value comes from: a flow input, an upstream stage's output, or a constant."""
    flow_input: str | None = None
    stage: str | None = None
    output: str | None = None
    value: Any = None


@dataclass(frozen=True)
class Node:
    stage: Stage
    inputs: dict[str, tuple[type, Source]]
    outputs: dict[str, type]

    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def upstream(self) -> set[str]:
        return {src.stage for _, src in self.inputs.values() if src.stage}


@dataclass(frozen=True)
class Dag:
    nodes: list[Node]
    inputs: dict[str, type]
    defaults: dict[str, Any]
    outputs: dict[str, Source]
    name: str = ""
    formats: dict[str, str] = field(default_factory=dict)  # file output -> its declared extension (pkl, html)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)


def contract_type(kind: type) -> type:
    """Map a Flyte interface type to the contract's: any FlyteFile is a file; primitives stay as they are."""
    return kind if kind in contract.SIMPLE_TYPES else contract.File


def file_formats(interface: dict[str, type]) -> dict[str, str]:
    """The extension each FlyteFile in an interface declares (`FlyteFile[TypeVar("pkl")]` -> pkl), also
    through a Domino artifact's annotation; none for primitives and format-less files."""
    formats = {}
    for name, kind in interface.items():
        if get_origin(kind) is Annotated:
            kind = get_args(kind)[0]
        extension = getattr(kind, "extension", None)
        if callable(extension) and extension():
            formats[name] = extension()
    return formats


def _source(binding, node_names: dict[str, str]) -> Source:
    data = binding.binding
    if data.promise is not None:
        ref = data.promise
        if ref.node_id in node_names:
            return Source(stage=node_names[ref.node_id], output=ref.var)
        return Source(flow_input=ref.var)
    if data.scalar is not None and data.scalar.primitive is not None:
        return Source(value=data.scalar.primitive.value)
    raise ValueError(f"input {binding.var}: unsupported binding in flow.py (only flow inputs, stage outputs "
                     f"and primitive constants can be run locally)")


def load(flow_file: Path = FLOW_FILE, workflow_name: str | None = None) -> Dag:
    """The DAG of the workflow in `flow_file` (of `workflow_name` when it holds several), from a cache keyed
    on everything that shapes it.

    Compiling means importing flytekit (about 1.5 s here), which would dominate a run whose stages all
    come from the cache; the compiled graph is the same as long as flow.py, this package and flytekit are.
    """
    digest = hashlib.sha256(f"{workflow_name or ''}\0{metadata.version('flytekit')}\0".encode())
    try:
        digest.update(Path(flow_file).read_bytes() + b"\0")
    except OSError as err:
        raise FlowError(f"flow file {flow_file}: {err.strerror}") from None
    for path in sorted((ROOT / "stageflow").rglob("*.py")):
        digest.update(path.read_bytes() + b"\0")
    cached = DAG_CACHE / f"{digest.hexdigest()}.json"
    try:
        return from_json(json.loads(cached.read_text()))
    except (OSError, ValueError, KeyError):
        pass
    try:
        dag = compile_flow(flow_file, workflow_name)
    except registry.UnknownStage as err:  # raised by flow.py itself or by a node of its workflow
        raise FlowError(str(err)) from None
    try:
        DAG_CACHE.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(to_json(dag)))
        os.replace(tmp, cached)
    except OSError:
        pass  # a read-only checkout still runs, just without the shortcut
    return dag


TYPES_BY_NAME = {name: kind for kind, name in contract.TYPE_NAMES.items()}


def to_json(dag: Dag) -> dict:
    def node(n: Node) -> dict:
        return {"stage": n.name, "outputs": {k: contract.TYPE_NAMES[t] for k, t in n.outputs.items()},
                "inputs": {k: [contract.TYPE_NAMES[t], vars(src)] for k, (t, src) in n.inputs.items()}}
    return {"nodes": [node(n) for n in dag.nodes], "inputs": {k: contract.TYPE_NAMES[t] for k, t in dag.inputs.items()},
            "defaults": dag.defaults, "outputs": {k: vars(src) for k, src in dag.outputs.items()},
            "name": dag.name, "formats": dag.formats}


def from_json(data: dict) -> Dag:
    nodes = [Node(registry.stage(n["stage"]),
                  {k: (TYPES_BY_NAME[t], Source(**src)) for k, (t, src) in n["inputs"].items()},
                  {k: TYPES_BY_NAME[t] for k, t in n["outputs"].items()}) for n in data["nodes"]]
    return Dag(nodes, {k: TYPES_BY_NAME[t] for k, t in data["inputs"].items()}, data["defaults"],
               {k: Source(**src) for k, src in data["outputs"].items()}, data["name"], data["formats"])


def find_workflow(module, flow_file: Path, workflow_name: str | None):
    """The `@workflow` defined in the module (imported ones do not count), or the one named."""
    from flytekit.core.workflow import WorkflowBase

    found = {value.short_name: value for value in vars(module).values()
             if isinstance(value, WorkflowBase) and value.name == f"{module.__name__}.{value.short_name}"}
    if workflow_name:
        if workflow_name not in found:
            raise FlowError(f"flow file {flow_file}: no @workflow named {workflow_name} "
                            f"(defined: {', '.join(found) or 'none'})")
        return found[workflow_name]
    if len(found) != 1:
        raise FlowError(f"flow file {flow_file}: defines no @workflow" if not found else
                        f"flow file {flow_file}: defines several workflows ({', '.join(found)}); "
                        f"choose one with --workflow NAME")
    return next(iter(found.values()))


def compile_flow(flow_file: Path, workflow_name: str | None = None) -> Dag:
    spec = importlib.util.spec_from_file_location("stageflow_flow", flow_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    on_interrupt = signal.getsignal(signal.SIGINT)
    try:
        spec.loader.exec_module(module)
        workflow = find_workflow(module, flow_file, workflow_name)
        workflow.compile()
    finally:
        # flytekit swaps in a SIGINT handler that exits at once; the runner must see Ctrl-C to clean up.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, on_interrupt)
    node_names = {node.id: node.flyte_entity.name for node in workflow.nodes}
    nodes = [compile_node(node, node_names) for node in workflow.nodes]
    outputs = {b.var: _source(b, node_names) for b in workflow.output_bindings}
    iface = workflow.python_interface
    return Dag(nodes, dict(iface.inputs), dict(iface.default_inputs_as_kwargs), outputs, workflow.short_name,
               file_formats(iface.outputs))


def compile_node(node, node_names: dict[str, str]) -> Node:
    interface = node.flyte_entity.python_interface
    inputs = {b.var: (contract_type(interface.inputs[b.var]), _source(b, node_names)) for b in node.bindings}
    outputs = {name: contract_type(kind) for name, kind in interface.outputs.items()}
    return Node(registry.stage(node.flyte_entity.name), inputs, outputs)
