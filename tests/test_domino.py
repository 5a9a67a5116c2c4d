"""flow.py as Domino and Flyte see it: the calls it makes to Domino's plugin, and the raw-container tasks
and workflow that plain flytekit serialises from it when the plugin is absent."""

import importlib.util
import inspect
import json
import os
import subprocess
import sys
import uuid
from collections import OrderedDict

import pytest
from flytekit.configuration import ImageConfig, SerializationSettings
from flytekit.core.constants import GLOBAL_INPUT_NODE_ID
from flytekit.models.task import DataLoadingConfig
from flytekit.models.types import SimpleType
from flytekit.tools.translator import get_serializable
from flytekit.types.file import FlyteFile

from stageflow.domino import environments, plugin as domino
from stageflow.registry import STAGES
from stageflow.runtime import schema as schemas

from conftest import ROOT, STANDIN


# What Domino must get, written out here rather than derived from the registry, so a wrong registry fails.
JOBS = {  # stage: (environment, hardware tier)
    "load_a": ("stageflow-load-a", "Small"),
    "load_b": ("stageflow-load-b", "Small"),
    "merge": ("stageflow-merge", "Medium"),
    "process": ("stageflow-process", "Medium"),
    "train": ("stageflow-train", "Large"),
}
# The schema's text is a constant input of every stage: ("constant", "schema") stands for the active schema's text.
SCHEMA = ("schema", "str", ("constant", "schema"))
INPUTS = {  # stage: [(input, type, where its value comes from: (stage or "flow", output or flow input))]
    "load_a": [("data_path", "str", ("flow", "data_path_a")), SCHEMA],
    "load_b": [("data_path", "str", ("flow", "data_path_b")), SCHEMA],
    "merge": [("datasetA", "file:parquet", ("load_a", "datasetA")),
              ("datasetB", "file:parquet", ("load_b", "datasetB")), SCHEMA],
    "process": [("merged_data", "file:parquet", ("merge", "merged_data")), SCHEMA],
    "train": [("processed_data", "file:parquet", ("process", "processed_data")),
              ("epochs", "int", ("flow", "epochs")), ("batch_size", "int", ("flow", "batch_size")),
              ("learning_rate", "float", ("flow", "learning_rate")), ("hidden_layers", "str", ("flow", "hidden_layers")),
              ("seed", "int", ("flow", "seed")), ("test_fraction", "float", ("flow", "test_fraction")),
              ("early_stopping", "int", ("flow", "early_stopping")), SCHEMA],
}
OUTPUTS = {
    "load_a": [("datasetA", "file:parquet")],
    "load_b": [("datasetB", "file:parquet")],
    "merge": [("merged_data", "file:parquet")],
    "process": [("processed_data", "file:parquet")],
    "train": [("model", "file:skops"), ("metrics", "file:json"), ("report", "file:html")],
}


def constant(value):
    """A constant input as INPUTS names it: the active schema's text is ("constant", "schema")."""
    return ("constant", "schema") if value == schemas.text() else ("constant", value)


def load_flow(monkeypatch):
    """A fresh import of flow.py under a new module name (removed again after the test)."""
    name = f"flow_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, ROOT / "flow.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    module.model_training.compile()
    return module


def kind(python_type) -> str:
    if isinstance(python_type, type) and issubclass(python_type, FlyteFile):
        return f"file:{python_type.extension()}"
    return python_type.__name__


@pytest.fixture
def no_record(tmp_path, monkeypatch):
    """No build/environments.json and no dataset named, as on a machine that never ran `make environments`."""
    monkeypatch.setattr(environments, "ENVIRONMENTS", tmp_path / "environments.json")
    monkeypatch.delenv("STAGEFLOW_DATASET", raising=False)
    monkeypatch.delenv("STAGEFLOW_DATASET_ID", raising=False)
    return tmp_path / "environments.json"


def recorded_calls(standin, monkeypatch):
    flow = load_flow(monkeypatch)
    assert flow.run_domino_job_task is standin.run_domino_job_task  # flow.py took the plugin, not the fallback
    assert [c["flyte_task_name"] for c in standin.CALLS] == list(JOBS)  # one call per stage, in order
    return {c["flyte_task_name"]: c for c in standin.CALLS}


@pytest.fixture
def calls(standin, monkeypatch, no_record):
    return recorded_calls(standin, monkeypatch)


def test_each_call_runs_the_stage_script_baked_into_its_own_image(calls):
    for name, call in calls.items():
        assert call["command"] == f"python /opt/stageflow/stages/{name}/main.py"
        dockerfile = (ROOT / "stages" / name / "Dockerfile").read_text()
        assert f"stages/{name}/main.py /opt/stageflow/stages/{name}/main.py\n" in dockerfile


def test_each_call_names_its_environment_tier_and_cache(calls):
    for name, call in calls.items():
        assert (call["environment_name"], call["hardware_tier_name"]) == JOBS[name]
        assert call["cache"] is (name not in ("load_a", "load_b"))  # a load's path may hold new data
        assert call["cache_version"] == STAGES[name].version  # changes exactly when the image does
        assert STAGES[name].image().endswith(":" + call["cache_version"])
        assert call["use_project_defaults_for_omitted"] is True


def test_without_a_record_environments_are_named_only(calls):
    assert all(call["environment_revision_id"] is None and call["dataset_snapshots"] is None for call in calls.values())


def test_each_call_pins_the_revision_built_from_its_image(standin, monkeypatch, no_record):
    revisions = {name: f"{n:024x}" for n, name in enumerate(STAGES, 1)}
    no_record.write_text(json.dumps({"definitions": {}, "applied": {"environments": {
        name: {"environment_id": f"e{revision[1:]}", "revision_id": revision, "image": "r@sha256:0",
               "version": STAGES[name].version, "status": "Succeeded"} for name, revision in revisions.items()}}}))
    calls = recorded_calls(standin, monkeypatch)
    for name, call in calls.items():
        assert call["environment_revision_id"] == revisions[name]
        assert call["environment_name"] == JOBS[name][0]  # with its environment, as public flows give both


def test_the_stages_that_read_the_sources_list_the_dataset_snapshot(standin, monkeypatch, no_record):
    monkeypatch.setenv("STAGEFLOW_DATASET", "iris:3")  # as `make submit DATASET=iris:3` hands it over
    monkeypatch.setenv("STAGEFLOW_DATASET_ID", "65f1c0de00000000000000aa")
    calls = recorded_calls(standin, monkeypatch)
    from flytekitplugins.domino.task import DatasetSnapshot

    for name, call in calls.items():
        reads_sources = any(source == "flow" and flow_input.startswith("data_path")
                            for _, _, (source, flow_input) in INPUTS[name])
        assert call["dataset_snapshots"] == ([DatasetSnapshot(Name="iris", Version=3, Id="65f1c0de00000000000000aa")]
                                             if reads_sources else None), name
    assert sum(call["dataset_snapshots"] is not None for call in calls.values()) == 2


def test_the_model_and_the_report_are_flow_artifacts_with_explicit_types(calls, standin):
    from flytekitplugins.domino.artifact import FILES

    assert FILES == [{"artifact": "Model", "kind": "MODEL", "name": "model.skops", "type": "skops"},
                     {"artifact": "Training report", "kind": "REPORT", "name": "report.html", "type": "html"}]


# Every keyword public Domino flows pass to run_domino_job_task (where each was seen: the stand-in's docstring).
PUBLIC_KEYWORDS = {
    "flyte_task_name": "load_a", "command": "python /mnt/code/x.py", "inputs": [], "output_specs": [],
    "environment_name": "SAS Analytics Pro", "environment_revision_id": "68792679a33fd917266afcbf",
    "hardware_tier_name": "Small", "hardware_tier_id": "small-k8s", "dataset_snapshots": [],
    "main_git_repo_ref": None, "use_latest_git_ref": True, "external_data_volumes": [], "volume_size_gib": 10,
    "dfs_repo_commit_id": "93326b183a6dd5ec24035b570337c08108658617", "cache": False, "cache_version": "1.0",
    "use_project_defaults_for_omitted": True,
}


def test_the_standin_takes_every_keyword_of_public_flows_and_no_other(standin):
    signature = inspect.signature(standin.run_domino_job_task)
    signature.bind(**PUBLIC_KEYWORDS)  # raises if one is missing
    assert not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    for misspelt in ("dataset_snapshot", "output_spec", "environment_id", "retries"):
        with pytest.raises(TypeError, match=misspelt):
            standin.run_domino_job_task("load_a", "cmd", **{misspelt: None})


def test_each_call_declares_typed_inputs_bound_to_upstream_outputs(calls):
    node_names = {promise.ref.node_id: name for name, call in calls.items() for promise in call["outputs"].values()}
    for name, call in calls.items():
        found = []
        for item in call["inputs"]:
            if not hasattr(item.value, "ref"):
                found.append((item.name, kind(item.type), constant(item.value)))
                continue
            ref = item.value.ref
            source = ("flow", ref.var) if ref.node_id == GLOBAL_INPUT_NODE_ID else (node_names[ref.node_id], ref.var)
            found.append((item.name, kind(item.type), source))
        assert found == INPUTS[name], name


def test_each_call_declares_its_outputs(calls):
    for name, call in calls.items():
        assert [(o.name, kind(o.type)) for o in call["output_specs"]] == OUTPUTS[name]
        assert list(call["outputs"]) == [o.name for o in call["output_specs"]]  # read as task["name"]


def test_the_standin_is_the_only_one_and_lives_under_tests():
    found = []
    for path, dirs, _ in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in (".git", ".venv", ".cache", "runs", "wheels", "build", ".workflow")]
        found += [os.path.join(path, d) for d in dirs if d == "flytekitplugins"]
    assert found == [str(STANDIN / "flytekitplugins")]


def test_without_standin_flow_uses_the_real_plugin_or_the_fallback(monkeypatch, no_record):
    flow = load_flow(monkeypatch)
    source = inspect.getsourcefile(flow.run_domino_job_task)
    assert not source.startswith(str(STANDIN))
    if importlib.util.find_spec("flytekitplugins") is None:
        assert flow.run_domino_job_task is domino.run_domino_job_task


# ---------------------------------------------------------------- plain flytekit: raw-container tasks

LITERAL_KINDS = {SimpleType.STRING: "str", SimpleType.INTEGER: "int", SimpleType.FLOAT: "float"}


def literal_kind(literal_type) -> str:
    return f"file:{literal_type.blob.format}" if literal_type.blob else LITERAL_KINDS[literal_type.simple]


@pytest.fixture
def serialised(monkeypatch, no_record):
    """flow.py serialised as `pyflyte register` would, images pushed to a (named, never contacted) registry."""
    monkeypatch.setenv("STAGEFLOW_REGISTRY", "registry.invalid:5000/team")
    flow = load_flow(monkeypatch)
    settings = SerializationSettings(image_config=ImageConfig.auto_default_image(), project="p", domain="d",
                                     version="v1")
    entities = OrderedDict()
    workflow = get_serializable(entities, settings, flow.model_training)
    tasks = {spec.template.id.name: spec.template for spec in entities.values()
             if type(spec).__name__ == "TaskSpec"}
    return tasks, workflow.template


def test_serialised_tasks_are_raw_containers_on_the_stage_images(serialised):
    tasks, _ = serialised
    assert list(tasks) == list(JOBS)
    for name, template in tasks.items():
        assert template.type == "raw-container"
        container = template.container
        assert container.image == f"registry.invalid:5000/team/{name.replace('_', '-')}:{STAGES[name].version}"
        assert list(container.command) == ["python", f"/opt/stageflow/stages/{name}/main.py"]
        assert not container.args
        config = container.data_loading_config.to_flyte_idl()  # as registered
        assert config.enabled and config.format == DataLoadingConfig.LITERALMAP_FORMAT_JSON
        assert (config.input_path, config.output_path) == ("/workflow/inputs", "/workflow/outputs")
        assert template.metadata.discoverable is STAGES[name].cache
        assert template.metadata.discovery_version == STAGES[name].version


def test_serialised_interfaces_match_the_contract(serialised):
    tasks, _ = serialised
    for name, template in tasks.items():
        inputs = {k: literal_kind(v.type) for k, v in template.interface.inputs.items()}
        outputs = [(k, literal_kind(v.type)) for k, v in template.interface.outputs.items()]
        assert inputs == {input_name: type_ for input_name, type_, _ in INPUTS[name]}
        assert outputs == OUTPUTS[name]


def test_serialised_workflow_binds_each_input_to_its_source(serialised):
    _, workflow = serialised
    names = {node.id: node.task_node.reference_id.name for node in workflow.nodes}
    for node in workflow.nodes:
        found = set()
        for binding in node.inputs:
            ref = binding.binding.promise
            if ref is None:  # a constant, serialised into the workflow: what Domino's cache keys on
                found.add((binding.var, constant(binding.binding.scalar.primitive.string_value)))
                continue
            found.add((binding.var, ("flow", ref.var) if ref.node_id == GLOBAL_INPUT_NODE_ID else (names[ref.node_id], ref.var)))
        name = names[node.id]
        assert found == {(input_name, source) for input_name, _, source in INPUTS[name]}, name
        assert {names[up] for up in node.upstream_node_ids} == {s for _, _, (s, _) in INPUTS[name]} - {"flow", "constant"}
    assert {(o.var, names[o.binding.promise.node_id], o.binding.promise.var) for o in workflow.outputs} == {
        ("model", "train", "model"), ("metrics", "train", "metrics"), ("report", "train", "report")}
    assert {v: literal_kind(t.type) for v, t in workflow.interface.inputs.items()} == {
        "data_path_a": "str", "data_path_b": "str", "epochs": "int", "batch_size": "int", "learning_rate": "float",
        "hidden_layers": "str", "seed": "int", "test_fraction": "float", "early_stopping": "int"}



# ---------------------------------------------------------------- the cluster stages' on-demand Dask cluster

CLUSTER_STAGES = ["load_a", "load_b", "merge", "process"]  # written out: a registry that marks others fails
TIER_IDS = {"Small": "small-k8s", "Medium": "medium-k8s", "Large": "large-k8s"}
DASK_CLUSTER = {"ClusterType": "Dask", "WorkerCount": 2, "WorkerHardwareTierId": "medium-k8s",
                "MasterHardwareTierId": "small-k8s", "WorkerStorageGiB": None, "MaxWorkerCount": None}


def cluster_tasks(standin, monkeypatch) -> dict[str, dict]:
    """flow.py's DominoJobTask declarations, with a cluster asked for (`make submit DASK=1`)."""
    monkeypatch.setenv("STAGEFLOW_DASK", "1")
    tasks = importlib.import_module("flytekitplugins.domino.task")
    tasks.TASKS.clear()
    load_flow(monkeypatch)
    assert [c["flyte_task_name"] for c in standin.CALLS] == [n for n in JOBS if n not in CLUSTER_STAGES]
    return {task["name"]: task for task in tasks.TASKS}


def test_asked_for_a_cluster_each_cluster_stage_is_a_domino_job_task_with_a_dask_cluster(standin, monkeypatch,
                                                                                        no_record):
    declared = cluster_tasks(standin, monkeypatch)
    assert list(declared) == CLUSTER_STAGES
    for name, task in declared.items():
        config, (environment, tier) = task["domino_job_config"], JOBS[name]
        cluster = config.ComputeClusterProperties
        assert config.Command == f"python /opt/stageflow/stages/{name}/main.py" and task["use_latest"] is True
        assert (config.EnvironmentId, config.HardwareTierId, config.EnvironmentRevisionSpec) == \
            (environment, TIER_IDS[tier], None)  # by name without a record; make submit needs one
        assert {key: getattr(cluster, key) for key in DASK_CLUSTER} == DASK_CLUSTER, name
        assert cluster.ComputeEnvironmentId == environment  # the stage's own image runs its workers
        assert (config.DatasetSnapshots is None) and config.ExternalVolumeMountIds is None


def test_a_cluster_stage_task_pins_its_environment_and_the_clusters_by_id(standin, monkeypatch, no_record):
    revisions = {name: f"{n:024x}" for n, name in enumerate(STAGES, 1)}
    no_record.write_text(json.dumps({"definitions": {}, "applied": {"environments": {
        name: {"environment_id": f"e{revision[1:]}", "revision_id": revision, "image": "r@sha256:0",
               "version": STAGES[name].version, "status": "Succeeded"} for name, revision in revisions.items()}}}))
    monkeypatch.setenv("STAGEFLOW_DATASET", "iris:3")
    declared = cluster_tasks(standin, monkeypatch)
    from flytekitplugins.domino.task import DatasetSnapshot, EnvironmentRevisionSpecification

    for name, task in declared.items():
        config = task["domino_job_config"]
        pinned = EnvironmentRevisionSpecification(EnvironmentRevisionType="SomeRevision",
                                                  EnvironmentRevisionId=revisions[name])
        assert config.EnvironmentId == f"e{revisions[name][1:]}" == config.ComputeClusterProperties.ComputeEnvironmentId
        assert config.EnvironmentRevisionSpec == pinned == config.ComputeClusterProperties.ComputeEnvironmentRevisionSpec
        assert config.DatasetSnapshots == ([DatasetSnapshot(Name="iris", Version=3)] if name.startswith("load")
                                           else None)


def test_asked_for_a_cluster_the_flow_runs_the_same_tasks_on_the_same_inputs(standin, monkeypatch, no_record):
    from stageflow import dag

    def shape(found):
        return [(n.name, n.task.command, n.task.environment, n.inputs, n.outputs) for n in found.nodes]

    alone = dag.compile_flow(ROOT / "flow.py")
    monkeypatch.setenv("STAGEFLOW_DASK", "1")
    clustered = dag.compile_flow(ROOT / "flow.py")
    assert shape(clustered) == shape(alone) and clustered.outputs == alone.outputs
    assert [n.task.tier for n in clustered.nodes] == ["small-k8s", "small-k8s", "medium-k8s", "medium-k8s", "Large"]


def test_a_cluster_stages_environment_lists_dask_among_its_supported_clusters():
    pushed = {"images": {name: f"reg/{name}@sha256:0" for name in STAGES}}
    found = environments.definitions(pushed)
    assert {name: d.get("supportedClusters", []) for name, d in found.items()} == \
        {name: ["Dask"] if name in CLUSTER_STAGES else [] for name in STAGES}
    assert environments.revision_body(found["merge"])["supportedClusters"] == ["Dask"]
    assert environments.revision_body(found["train"])["supportedClusters"] == []


@pytest.mark.parametrize("fields, problem", [
    ({"ClusterType": "Dusk"}, "ClusterType 'Dusk'"),
    ({"MasterHardwareTierId": None}, "needs MasterHardwareTierId"),
    ({"WorkerCount": 0}, "WorkerCount 0"),
    ({"MaxWorkerCount": 1, "WorkerCount": 2}, "MaxWorkerCount 1 is below"),
])
def test_the_standin_refuses_a_cluster_domino_would_not_start(standin, fields, problem):
    from flytekitplugins.domino.task import ClusterProperties

    given = {"ClusterType": "Dask", "ComputeEnvironmentId": "e1", "WorkerHardwareTierId": "medium-k8s",
             "WorkerCount": 2, "MasterHardwareTierId": "small-k8s", **fields}
    with pytest.raises(ValueError, match=problem):
        ClusterProperties(**given)


@pytest.mark.parametrize("make", ["ClusterProperties", "DominoJobConfig"])
def test_the_standin_refuses_a_field_the_plugin_does_not_have(standin, make):
    import flytekitplugins.domino.task as task

    with pytest.raises(TypeError, match="WorkerHardareTierId"):  # the spelling of the plugin's first dataclass
        getattr(task, make)(WorkerHardareTierId="medium-k8s")


def test_a_task_asking_for_a_cluster_no_local_run_has_is_refused_before_anything_runs(tmp_path):
    flow = tmp_path / "spark_flow.py"
    flow.write_text(
        "from flytekit import workflow\n"
        "from flytekitplugins.domino.task import ClusterProperties, ComputeClusterType, DominoJobConfig, DominoJobTask\n"
        "spark = DominoJobTask(name='crunch', domino_job_config=DominoJobConfig(Command='python crunch.py',\n"
        "    ComputeClusterProperties=ClusterProperties(ClusterType=ComputeClusterType.Spark, ComputeEnvironmentId='e',\n"
        "        WorkerHardwareTierId='small-k8s', WorkerCount=2, MasterHardwareTierId='small-k8s')), use_latest=True)\n"
        "@workflow\n"
        "def big() -> None:\n"
        "    spark()\n")
    found = subprocess.run([sys.executable, "-m", "stageflow", "run", "--backend", "docker", str(flow), "big"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert found.returncode == 2 and "Traceback" not in found.stderr + found.stdout
    assert "task crunch: asks for an on-demand Spark cluster, which exists only on Domino" in found.stderr + found.stdout
