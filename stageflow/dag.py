"""A flow's DAG, read from the flow file itself by compiling its workflow with flytekit.

There is no second, hand-written list of tasks and edges: the runner, the compose harness and the tests all
take the graph that Flyte (and so Domino) will run. Nothing here knows a flow's names. Any flow of Domino job
tasks compiles: this project's flow.py, Domino's template flows, a user's own. Each `run_domino_job_task` call
is a node of its own (two calls of one task are two nodes, each with its own inputs, folder and record); a
node carries the Task it runs, as the Domino job it becomes: its command, environment, hardware tier and
datasets. A flow file that imports Domino's plugin compiles here without it: the stand-in in
stageflow/domino/standin is put on the path, after everything else, only when the real plugin is absent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib.util
import json
import os
import re
import signal
import sys
import threading
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

from stageflow.registry import PACKAGE, ROOT
from stageflow.runtime import contract, schema as schemas
from stageflow.runtime.contract import StageError

FLOW_FILE = ROOT / "flow.py"
DAG_CACHE = ROOT / ".cache" / "dag"
STANDIN = PACKAGE / "domino" / "standin"  # Domino's plugin for flows compiled without it


class FlowError(StageError):
    """A flow file that cannot give a DAG, or a run it cannot take: one line, before anything runs."""


@dataclass(frozen=True)
class Source:
    """Where an input's value comes from: a flow input, an upstream node's output, or a constant."""
    flow_input: str | None = None
    stage: str | None = None  # the upstream node's name
    output: str | None = None
    value: Any = None


@dataclass(frozen=True)
class Task:
    """A Domino job task as the flow declares it: what a local run needs to run it as Domino would."""
    name: str  # flyte_task_name
    command: str
    environment: str | None = None
    tier: str | None = None
    datasets: tuple[tuple[str, int | None], ...] = ()  # (name, version) of each snapshot the job mounts
    cache: bool = False
    cache_version: str = ""
    unsupported: tuple[str, ...] = ()  # Domino features the flow asks for that no local run has


@dataclass(frozen=True)
class Node:
    name: str  # unique in its DAG: the task's name, with its Flyte node id when a task is called twice
    task: Task
    inputs: dict[str, tuple[type, Source]]
    outputs: dict[str, type]
    formats: dict[str, str] = field(default_factory=dict)  # file output -> its declared extension

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
    output_types: dict[str, type] = field(default_factory=dict)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def downstream(self, name: str) -> list[Node]:
        """The nodes that depend on node `name`, directly or not, in the DAG's order."""
        below, grew = {name}, True
        while grew:
            found = {node.name for node in self.nodes if node.upstream & below}
            grew = not found <= below
            below |= found
        return [node for node in self.nodes if node.name in below - {name}]

    def folders(self) -> dict[str, str]:
        """Each node's folder in a run directory: its name made safe for a path, unique in the run."""
        found: dict[str, str] = {}
        for node in self.nodes:
            base = re.sub(r"[^a-z0-9_.-]+", "-", node.name.lower()).strip("-.") or "task"
            name, n = base, 1
            while name in found.values() or name in ("logs", "outputs"):
                n += 1
                name = f"{base}-{n}"
            found[node.name] = name
        return found

    def only(self, name: str, values: dict[str, Any]) -> "Dag":
        """Node `name` alone, each input a constant from `values`, its outputs the DAG's: what runs one task
        (a task of a local pyflyte run, one stage through compose)."""
        node = self.node(name)
        inputs = {key: (kind, Source(value=values[key])) for key, (kind, _) in node.inputs.items()}
        alone = Node(node.name, node.task, inputs, node.outputs, node.formats)
        return Dag([alone], {}, {}, {output: Source(stage=name, output=output) for output in node.outputs},
                   name, node.formats, dict(node.outputs))


# ---------------------------------------------------------------- types and values

def contract_type(kind: Any, what: str) -> type:
    """A Flyte interface type as the contract's: a FlyteFile (any format, an artifact's file included) is a
    file, a FlyteDirectory a directory, primitives stay; anything else cannot cross a job's boundary."""
    from flytekit.types.directory import FlyteDirectory
    from flytekit.types.file import FlyteFile

    if get_origin(kind) is Annotated:
        kind = get_args(kind)[0]
    if kind in contract.SIMPLE_TYPES:
        return kind
    if isinstance(kind, type) and issubclass(kind, FlyteFile):
        return contract.File
    if isinstance(kind, type) and issubclass(kind, FlyteDirectory):
        return contract.Directory
    shown = getattr(kind, "__name__", None) or str(kind)
    raise FlowError(f"{what}: type {shown} is not supported by the local runner (it runs files, directories, "
                    f"str, int, float, bool, datetime and timedelta, which is what a Domino job's /workflow holds)")


def file_formats(interface: dict[str, Any]) -> dict[str, str]:
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


def normalise(what: str, kind: type, value: Any) -> Any:
    """A value given for an input (a flow input on the command line, a task input from pyflyte or compose)
    as the runner takes it: typed, a file or directory as its absolute path; one line naming it otherwise.

    The one place values are checked: an empty path is refused, never taken for "not given"."""
    if kind in (contract.File, contract.Directory):
        text = os.fspath(value) if isinstance(value, (str, os.PathLike)) else None
        if not text:
            raise FlowError(f"{what}: expected the path of a {contract.TYPE_NAMES[kind]}, found {value!r}")
        path = Path(text).absolute()
        if not path.exists():
            raise FlowError(f"{what}: {text} does not exist")
        if (kind is contract.File) != path.is_file() or (kind is contract.Directory) != path.is_dir():
            found = "a directory" if path.is_dir() else contract.file_kind(path.stat().st_mode)
            raise FlowError(f"{what}: {text} is {found}, not a {contract.TYPE_NAMES[kind]}")
        return path
    if isinstance(value, str) and kind is not str:
        try:
            value = contract.parse_value(value, kind)
        except ValueError as err:
            raise FlowError(f"{what}: {err}, found {value!r}") from None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FlowError(f"{what}: expected {contract.TYPE_NAMES[kind]}, found {value!r}")
    return value


def check_params(dag: Dag, params: dict[str, Any]) -> dict[str, Any]:
    """The flow's inputs, checked against its signature before anything runs, as Flyte would."""
    merged = {**dag.defaults, **{k: v for k, v in params.items() if v is not None}}
    unknown = sorted(set(merged) - set(dag.inputs))
    if unknown:
        raise FlowError(f"flow input {', '.join(unknown)}: not an input of {dag.name or 'the flow'} "
                        f"(its inputs: {', '.join(dag.inputs) or 'none'})")
    missing = sorted(set(dag.inputs) - set(merged))
    if missing:
        raise FlowError(f"flow input {', '.join(missing)}: required but not given")
    return {name: normalise(f"flow input {name}", dag.inputs[name], value) for name, value in merged.items()}


# ---------------------------------------------------------------- loading a flow file

def load(flow_file: Path = FLOW_FILE, workflow_name: str | None = None) -> Dag:
    """The DAG of the workflow in `flow_file` (of `workflow_name` when it holds several), from a cache keyed
    on everything that shapes it.

    Compiling means importing flytekit (about 1.5 s here), which would dominate a run whose stages all
    come from the cache; the compiled graph is the same as long as the flow file, this package and flytekit
    are (a flow that imports other files of its own is compiled every time: their content is not known here),
    and as long as the active schema is: this checkout's flow.py passes its text to the stages as a constant.
    """
    flow_file = Path(flow_file)
    checked(flow_file)
    digest = hashlib.sha256(f"{workflow_name or ''}\0{metadata.version('flytekit')}\0{flow_file.resolve()}\0".encode())
    digest.update(flow_file.read_bytes() + b"\0")
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(path.read_bytes() + b"\0")
    for name, value in sorted(os.environ.items()):  # flow.py reads its pins from the environment
        if name.startswith("STAGEFLOW_"):
            digest.update(f"{name}={value}\0".encode())
    with contextlib.suppress(OSError):
        digest.update(schemas.path().read_bytes())
    cached = DAG_CACHE / f"{digest.hexdigest()}.json"
    try:
        return from_json(json.loads(cached.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    dag = compile_flow(flow_file, workflow_name)
    if flow_file.resolve().parent == ROOT:  # only this checkout's own flow: another may import its neighbours
        try:
            DAG_CACHE.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(to_json(dag)))
            os.replace(tmp, cached)
        except (OSError, TypeError, ValueError):
            pass  # a read-only checkout still runs, just without the shortcut
    return dag


def checked(flow_file: Path) -> None:
    """A flow file that is there and is Python, or one line saying what it is instead."""
    what = f"flow file {flow_file}"
    if not flow_file.exists():
        raise FlowError(f"{what}: does not exist")
    if not flow_file.is_file():
        raise FlowError(f"{what}: not a file")
    if flow_file.suffix != ".py":
        raise FlowError(f"{what}: not a Python file (a flow is a .py file with a @workflow in it)")
    try:
        compile(flow_file.read_bytes(), str(flow_file), "exec")
    except SyntaxError as err:
        raise FlowError(f"{what}: line {err.lineno}: {err.msg}") from None
    except (ValueError, OSError) as err:
        raise FlowError(f"{what}: {contract.one_line(err)}") from None


TYPES_BY_NAME = {name: kind for kind, name in contract.TYPE_NAMES.items()}


def to_json(dag: Dag) -> dict:
    def node(n: Node) -> dict:
        return {"name": n.name, "task": {**vars(n.task), "datasets": [list(d) for d in n.task.datasets],
                                         "unsupported": list(n.task.unsupported)},
                "outputs": {k: contract.TYPE_NAMES[t] for k, t in n.outputs.items()}, "formats": n.formats,
                "inputs": {k: [contract.TYPE_NAMES[t], vars(src)] for k, (t, src) in n.inputs.items()}}
    return {"nodes": [node(n) for n in dag.nodes], "inputs": {k: contract.TYPE_NAMES[t] for k, t in dag.inputs.items()},
            "defaults": dag.defaults, "outputs": {k: vars(src) for k, src in dag.outputs.items()},
            "name": dag.name, "formats": dag.formats,
            "output_types": {k: contract.TYPE_NAMES[t] for k, t in dag.output_types.items()}}


def from_json(data: dict) -> Dag:
    def task(t: dict) -> Task:
        return Task(**{**t, "datasets": tuple(tuple(d) for d in t["datasets"]), "unsupported": tuple(t["unsupported"])})
    nodes = [Node(n["name"], task(n["task"]),
                  {k: (TYPES_BY_NAME[t], Source(**src)) for k, (t, src) in n["inputs"].items()},
                  {k: TYPES_BY_NAME[t] for k, t in n["outputs"].items()}, n["formats"]) for n in data["nodes"]]
    return Dag(nodes, {k: TYPES_BY_NAME[t] for k, t in data["inputs"].items()}, data["defaults"],
               {k: Source(**src) for k, src in data["outputs"].items()}, data["name"], data["formats"],
               {k: TYPES_BY_NAME[t] for k, t in data["output_types"].items()})


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
                        f"name the one to run (stageflow run FLOW.py WORKFLOW, or --workflow NAME)")
    return next(iter(found.values()))


def plugin_missing() -> bool:
    try:
        return importlib.util.find_spec("flytekitplugins.domino.helpers") is None
    except ImportError:
        return True


def import_flow(flow_file: Path):
    """Import the flow file as a module, as pyflyte does: its folder first on the path (a flow imports its
    neighbours), Domino's plugin from the stand-in only where the real one is absent (appended last, so it
    can never shadow it). An error raised by the flow's own code is one line naming the flow file."""
    folder = str(flow_file.resolve().parent)
    added = [path for path in (folder,) if path not in sys.path]
    sys.path[:0] = added
    if plugin_missing() and str(STANDIN) not in sys.path:
        sys.path.append(str(STANDIN))
    name = "stageflow_flow_" + hashlib.sha256(str(flow_file.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, flow_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except FlowError:
        raise
    except StageError as err:  # flow.py's own one-line refusal (an unknown stage, a bad pin)
        raise FlowError(str(err)) from None
    except Exception as err:  # noqa: BLE001 - the flow's own code failed: say where, in one line
        raise FlowError(f"flow file {flow_file}: importing it failed: {contract.one_line(err)}") from None
    return module


def forget_standin() -> None:
    """Drop the stand-in's modules (and the namespace package that found them) once a flow is compiled, so
    that nothing imported later in this process takes them for Domino's plugin."""
    for name, module in list(sys.modules.items()):
        where = [str(getattr(module, "__file__", None) or ""), *map(str, getattr(module, "__path__", None) or [])]
        if name.split(".")[0] == "flytekitplugins" and any(w.startswith(str(STANDIN)) for w in where):
            del sys.modules[name]


def compile_flow(flow_file: Path, workflow_name: str | None = None) -> Dag:
    on_interrupt = signal.getsignal(signal.SIGINT)
    path_before = list(sys.path)
    try:
        module = import_flow(flow_file)
        workflow = find_workflow(module, flow_file, workflow_name)
        try:
            workflow.compile()
        except StageError:  # the flow's own one-line refusal (a schema mistake, an unknown stage)
            raise
        except Exception as err:  # noqa: BLE001 - flytekit's own complaint about the workflow
            raise FlowError(f"flow file {flow_file}: workflow {workflow.short_name}: {contract.one_line(err)}") from None
    finally:
        # flytekit swaps in a SIGINT handler that exits at once; the runner must see Ctrl-C to clean up.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, on_interrupt)
        sys.path[:] = path_before  # the flow's folder and the stand-in were for this import only
        forget_standin()
    names = node_names(workflow.nodes)
    nodes = [compile_node(node, names) for node in workflow.nodes]
    outputs = {b.var: _source(b, names, f"workflow output {b.var}") for b in workflow.output_bindings}
    iface = workflow.python_interface
    inputs = {name: contract_type(kind, f"workflow input {name}") for name, kind in iface.inputs.items()}
    output_types = {name: contract_type(kind, f"workflow output {name}") for name, kind in iface.outputs.items()}
    return Dag(nodes, inputs, dict(iface.default_inputs_as_kwargs), outputs, workflow.short_name,
               file_formats(iface.outputs), output_types)


def node_names(nodes) -> dict[str, str]:
    """Flyte node id -> the node's name: its task's name, with the node id when the task is called more than
    once (train at 5 and at 20 epochs are two nodes, never one)."""
    counts: dict[str, int] = {}
    for node in nodes:
        counts[entity_name(node)] = counts.get(entity_name(node), 0) + 1
    return {node.id: entity_name(node) if counts[entity_name(node)] == 1 else f"{entity_name(node)} ({node.id})"
            for node in nodes}


def entity_name(node) -> str:
    return getattr(node.flyte_entity, "name", node.id)


def _source(binding, names: dict[str, str], what: str) -> Source:
    data = binding.binding
    if data.promise is not None:
        ref = data.promise
        if ref.node_id in names:
            return Source(stage=names[ref.node_id], output=ref.var)
        return Source(flow_input=ref.var)
    scalar = data.scalar
    if scalar is not None and scalar.primitive is not None:
        value = scalar.primitive.value
        if isinstance(value, dt.datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)  # Flyte stores datetimes in UTC
        return Source(value=value)
    if scalar is not None and scalar.blob is not None:
        return Source(value=scalar.blob.uri)
    raise FlowError(f"{what}: bound to something the local runner cannot pass (it passes flow inputs, task "
                    f"outputs and constants of the types a Domino job's /workflow holds)")


def compile_node(node, names: dict[str, str]) -> Node:
    from stageflow.domino.plugin import JobTask

    entity, name = node.flyte_entity, names[node.id]
    if not isinstance(entity, JobTask):
        kind = type(entity).__name__
        raise FlowError(f"task {name}: a flytekit {kind}, which the local runner does not run; it runs Domino job "
                        f"tasks (run_domino_job_task), each in its environment's image as a Domino job would be")
    interface = entity.python_interface
    inputs = {b.var: (contract_type(interface.inputs[b.var], f"input {b.var} of task {name}"),
                      _source(b, names, f"input {b.var} of task {name}")) for b in node.bindings}
    outputs = {key: contract_type(kind, f"output {key} of task {name}") for key, kind in interface.outputs.items()}
    return Node(name, entity.job, inputs, outputs, file_formats(interface.outputs))
