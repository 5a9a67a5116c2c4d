"""`make environments` against a stand-in Domino on 127.0.0.1 (tests/domino_server.py): the definitions written
for review, the environments created or revised, each revision's build waited for, and how it authenticates
from outside (API key, personal access token) and inside a run (the API proxy, the run's token)."""

import hashlib
import json
import re

import pytest

import domino_server
from domino_server import CREATE_PATH as CREATE
from stageflow import cli, dag as dag_module, jobs
from stageflow.domino import api as domino_api, environments
from stageflow.registry import STAGES
from stageflow.runtime import schema as schemas

from conftest import ROOT, samples


def pushed_record(tag: str = "") -> dict:
    registry = "127.0.0.1:5000/stageflow"
    return {"registry": registry,
            "images": {name: f"{registry}/{name.replace('_', '-')}@sha256:{hashlib.sha256((name + tag).encode()).hexdigest()}"
                       for name in STAGES},
            "versions": {name: stage.version for name, stage in STAGES.items()}}


DOMINO_VARS = ("DOMINO_API_HOST", "DOMINO_API_PROXY", "DOMINO_USER_API_KEY", "DOMINO_ACCESS_TOKEN", "DOMINO_RUN_ID")


@pytest.fixture
def records(tmp_path, monkeypatch):
    """build/pushed.json and build/environments.json, in a temporary build directory."""
    monkeypatch.setattr(environments, "BUILD", tmp_path)
    monkeypatch.setattr(environments, "PUSHED", tmp_path / "pushed.json")
    monkeypatch.setattr(environments, "ENVIRONMENTS", tmp_path / "environments.json")
    for name in DOMINO_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STAGEFLOW_BUILD_POLL", "0")  # the stand-in's builds move on per read, not with time

    def push(record):
        (tmp_path / "pushed.json").write_text(json.dumps(record))
    push(pushed_record())
    return push


@pytest.fixture
def domino(monkeypatch):
    """The stand-in deployment, reached from outside: its URL and an API key."""
    with domino_server.running() as deployment:
        deployment.add_environment("Domino Standard Environment")
        deployment.load_b = deployment.add_environment("stageflow-load-b")
        monkeypatch.setenv("DOMINO_API_HOST", deployment.host + "/")
        monkeypatch.setenv("DOMINO_USER_API_KEY", domino_server.KEY)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # a proxy set for real traffic must not see this
        yield deployment


def run(capsys):
    code = cli.main(["environments"])
    out, err = capsys.readouterr()
    return code, out, err


def written():
    return json.loads(environments.ENVIRONMENTS.read_text())


def sent(domino, method=None):
    return [(r["method"], r["path"]) for r in domino.requests if method in (None, r["method"])]


def test_environments_need_a_push(records, capsys):
    environments.PUSHED.unlink()
    code, _, err = run(capsys)
    assert code == 1
    assert err == "error: no images pushed (" + str(environments.PUSHED) + " missing): run `make push REGISTRY=host:port/prefix`\n"


def test_a_push_of_other_code_is_named(records, capsys):
    stale = pushed_record()
    stale["versions"]["train"] = "000000000000"
    records(stale)
    code, _, err = run(capsys)
    assert code == 1
    assert (f"images pushed for another version of the code: train (pushed 000000000000, code at "
            f"{STAGES['train'].version}); run `make push REGISTRY=127.0.0.1:5000/stageflow`") in err


def test_definitions_are_written_for_review_without_credentials(records, capsys):
    code, out, _ = run(capsys)
    assert code == 0
    defined = written()["definitions"]
    assert written()["applied"] is None
    assert list(defined) == list(STAGES)
    for name, definition in defined.items():
        stage = STAGES[name]
        assert definition["name"] == stage.environment and definition["image"] == pushed_record()["images"][name]
        assert "@sha256:" in definition["image"]  # by digest: the revision names exactly the pushed image
        instructions = definition["dockerfileInstructions"]
        assert not re.search(r"^\s*FROM\b", instructions, re.M | re.I)  # Domino supplies FROM <image>
        assert f"io.stageflow.version={stage.version}" in instructions
        lines = [line for line in instructions.splitlines() if not line.startswith("#")]
        # Domino runs them as the image's last user (12574): root first, as public recipes do; Domino's user last.
        assert lines[0] == "USER root" and lines[-1] == "USER 12574:12574"
        assert "ENV PATH=/opt/stage/bin:/opt/venv/bin:$PATH PYTHONPATH=/opt/stageflow PYTHONUNBUFFERED=1" \
            in instructions  # the libraries image's own: /opt/stage's scripts on PATH, its libraries by a .pth
        assert stage.description in definition["description"] and stage.version in definition["description"]
        assert f"{name:8} {stage.environment:20} {definition['image']}" in out
    assert "nothing was sent to Domino: set DOMINO_API_HOST with DOMINO_ACCESS_TOKEN" in out


def test_environments_are_created_or_revised_and_each_build_is_waited_for(records, domino, capsys):
    code, out, err = run(capsys)
    assert code == 0, err
    posts = sent(domino, "POST")
    assert posts == [("POST", CREATE), ("POST", f"{CREATE}/{domino.load_b['id']}/revisions"),
                     ("POST", CREATE), ("POST", CREATE), ("POST", CREATE)]
    defined = written()["definitions"]
    creates = [r["body"] for r in domino.requests if r["path"] == CREATE]
    assert [body["name"] for body in creates] == ["stageflow-load-a", "stageflow-merge", "stageflow-process",
                                                  "stageflow-train"]
    for body in creates:
        stage = next(name for name, d in defined.items() if d["name"] == body["name"])
        assert body["image"] == defined[stage]["image"]
        assert body["dockerfileInstructions"] == defined[stage]["dockerfileInstructions"]
        assert body["description"] == defined[stage]["description"]
        assert (body["visibility"], body["addBaseDependencies"], body["isRestricted"]) == ("Private", True, False)
    revision = next(r["body"] for r in domino.requests if r["path"].endswith("/revisions"))
    assert revision["image"] == defined["load_b"]["image"] and "name" not in revision
    # Recorded per stage: the environment's id and the id of the revision built from this push, as Domino has them.
    on_domino = {e["name"]: e for e in domino.environments.values()}
    applied = written()["applied"]["environments"]
    for name, entry in applied.items():
        environment = on_domino[STAGES[name].environment]
        assert entry["environment_id"] == environment["id"]
        assert entry["revision_id"] == environment["revisions"][-1]["id"] != entry["environment_id"]
        assert entry["image"] == defined[name]["image"] == environment["revisions"][-1]["image"]
        assert (entry["version"], entry["status"]) == (STAGES[name].version, "Succeeded")
    assert applied["load_b"]["environment_id"] == domino.load_b["id"]  # revised, not created again
    assert domino.load_b["revisions"][-1]["number"] == 2
    assert environments.built_revisions() == {name: entry["revision_id"] for name, entry in applied.items()}
    # Progress: each status as Domino reports it, until it is built.
    merge = re.findall(r"^merge +stageflow-merge +revision 1: (\w+) \(\d+ s\)$", out, re.M)
    assert merge == ["Queued", "Building", "Succeeded"]
    assert f"load_b   stageflow-load-b     revision added: environment {domino.load_b['id']}, revision " \
           f"{applied['load_b']['revision_id']}" in out


def test_a_failed_build_fails_with_dominos_status_and_message(records, domino, capsys):
    domino.builds["stageflow-merge"] = domino_server.FAILED_BUILD
    code, out, err = run(capsys)
    assert code == 1
    merge = written()["applied"]["environments"]["merge"]
    assert err == (f"error: stage merge: revision {merge['revision_id']} of stageflow-merge failed to build (Failed: "
                   f"Step 4/7 : RUN pip install ... returned a non-zero code: 1): see its build log in Domino, then run "
                   f"`make environments` again\n")
    assert merge["status"] == "Failed"
    assert environments.built_revisions().keys() == set(STAGES) - {"merge"}  # the others are built and kept
    del domino.builds["stageflow-merge"], domino.requests[:]
    assert run(capsys)[0] == 0  # once fixed, only merge gets a new revision
    assert sent(domino, "POST") == [("POST", f"{CREATE}/{merge['environment_id']}/revisions")]
    assert environments.built_revisions().keys() == set(STAGES)


def test_a_build_that_outlasts_the_timeout_is_waited_for_again_not_repeated(records, domino, capsys, monkeypatch):
    assert run(capsys)[0] == 0
    new = pushed_record()
    new["images"]["train"] = new["images"]["train"].replace("@sha256:", "@sha256:f")[:-1]  # a new push of train
    records(new)
    domino.builds["stageflow-train"] = ["Queued", "Building"]  # stays Building
    monkeypatch.setenv("STAGEFLOW_BUILD_TIMEOUT", "0")
    code, _, err = run(capsys)
    assert code == 1
    assert err == ("error: revisions still building after 0 s: train (Queued); run `make environments` again to keep "
                   "waiting (no new revision is added), or set STAGEFLOW_BUILD_TIMEOUT\n")
    train = written()["applied"]["environments"]["train"]
    assert train["image"] == new["images"]["train"] and train["status"] == "sent"
    assert "train" not in environments.built_revisions()
    monkeypatch.delenv("STAGEFLOW_BUILD_TIMEOUT")
    domino.revisions[train["revision_id"]]["script"] = ["Building", "Succeeded"]
    del domino.requests[:]
    assert run(capsys)[0] == 0
    assert sent(domino, "POST") == []
    assert environments.built_revisions()["train"] == train["revision_id"]


def test_a_second_run_sends_only_what_changed(records, domino, capsys):
    run(capsys)
    del domino.requests[:]
    code, out, _ = run(capsys)
    assert code == 0 and sent(domino, "POST") == [] and out.count("up to date") == 5
    new = pushed_record()
    new["images"]["merge"] = new["images"]["merge"].replace("@sha256:", "@sha256:f")[:-1]  # a new push of merge
    records(new)
    del domino.requests[:]
    assert run(capsys)[0] == 0
    merge = written()["applied"]["environments"]["merge"]
    assert sent(domino, "POST") == [("POST", f"{CREATE}/{merge['environment_id']}/revisions")]
    assert domino.revisions[merge["revision_id"]]["image"] == merge["image"] == new["images"]["merge"]


def test_a_refused_request_stops_and_keeps_what_was_done(records, domino, capsys):
    domino.refuse = {"stageflow-merge"}
    code, _, err = run(capsys)
    assert code == 1
    assert err.startswith(f"error: stage merge, environment stageflow-merge: POST {domino.host}{CREATE}: HTTP 500 ")
    assert "image pull failed" in err
    assert set(written()["applied"]["environments"]) == {"load_a", "load_b"}
    domino.refuse = set()
    del domino.requests[:]
    assert run(capsys)[0] == 0  # the retry does not add load_a and load_b again
    assert [r["body"]["name"] for r in domino.requests if r["path"] == CREATE] == [
        "stageflow-merge", "stageflow-process", "stageflow-train"]
    assert not [r for r in domino.requests if r["path"].endswith("/revisions")]


def test_answers_without_their_envelope_are_read_too(records, domino, capsys):
    domino.bare = True  # objects unwrapped; a created environment without its first revision: read back
    assert run(capsys)[0] == 0
    on_domino = {e["name"]: e for e in domino.environments.values()}
    assert environments.built_revisions() == {name: on_domino[stage.environment]["revisions"][-1]["id"]
                                              for name, stage in STAGES.items()}


def test_an_answer_without_the_id_it_should_carry_stops_and_records_no_guess(records, domino, capsys, monkeypatch):
    """The created environment's envelope is the stand-in's guess (no public source shows it): if Domino's
    differs so that no id is found, the command stops in one line instead of recording an unpinnable None."""
    route = domino.route

    def without_ids(method, path, query, body, user):
        status, answer = route(method, path, query, body, user)
        if method == "POST":
            for view in (answer, answer.get("environment") or {}, answer.get("environmentRevision") or {}):
                view.pop("id", None)
        return status, answer
    monkeypatch.setattr(domino, "route", without_ids)
    code, _, err = run(capsys)
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1
    assert "carries no environment id; nothing recorded for it" in err
    assert written()["applied"] is None  # the definitions are kept; no environment is recorded as applied


def test_a_wrong_key_is_reported(records, domino, capsys, monkeypatch):
    monkeypatch.setenv("DOMINO_USER_API_KEY", "wrong")
    code, _, err = run(capsys)
    assert code == 1 and f"GET {domino.host}/v1/environments: HTTP 401" in err


def test_a_personal_access_token_is_sent_as_a_bearer_token(records, domino, capsys, monkeypatch):
    monkeypatch.delenv("DOMINO_USER_API_KEY")
    monkeypatch.setenv("DOMINO_ACCESS_TOKEN", domino_server.TOKEN)
    assert run(capsys)[0] == 0
    assert {json.dumps(r["auth"]) for r in domino.requests} == {
        json.dumps({"Authorization": f"Bearer {domino_server.TOKEN}"})}


def test_inside_a_run_the_api_proxy_is_used_without_credentials(records, domino, capsys, monkeypatch):
    for name, value in domino_server.workspace(domino).items():
        monkeypatch.setenv(name, value)  # DOMINO_API_HOST is the internal URL, which does not resolve here
    code, out, err = run(capsys)
    assert code == 0, err
    assert {r["listener"] for r in domino.requests} == {"proxy"} and all(not r["auth"] for r in domino.requests)
    assert environments.built_revisions().keys() == set(STAGES)
    assert f"on Domino's API proxy {domino.proxy}" in out


def test_inside_a_run_without_the_proxy_the_runs_token_is_used(records, domino, capsys, monkeypatch):
    monkeypatch.delenv("DOMINO_USER_API_KEY")
    monkeypatch.setenv("DOMINO_RUN_ID", "run-1")
    monkeypatch.setattr(domino_api, "TOKEN_URL", domino.proxy + "/access-token")
    assert run(capsys)[0] == 0
    calls = [r for r in domino.requests if r["listener"] == "host"]
    assert calls and all(r["auth"] == {"Authorization": f"Bearer {domino_server.RUN_TOKEN}"} for r in calls)


@pytest.mark.docker
@pytest.mark.parametrize("name", ["load_a", "train"])
def test_an_environment_built_from_its_definition_runs_the_flow_command(tmp_path, name):
    """What Domino builds (FROM the stage image, then the instructions) keeps the image's settings (train's own
    libraries in /opt/stage included), ends as Domino's user, and runs flow.py's command for the stage through
    a shell, as a job's command, not the entrypoint, as the image's own user."""
    import io
    import shutil

    from stageflow import containers, images

    client = images.client()
    stage = STAGES[name]
    dockerfile = f"FROM {stage.image()}\n{environments.dockerfile_instructions(stage)}"
    tag = f"stageflow-environment-test:{stage.version}"
    image, _ = client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
    try:
        base = client.images.get(stage.image()).attrs["Config"]
        assert image.labels["io.stageflow.version"] == stage.version
        assert image.attrs["Config"]["User"] == "12574:12574"
        def settings(config):  # PATH restated over itself repeats its entries; the first of each one counts
            env = dict(item.split("=", 1) for item in config["Env"])
            env["PATH"] = ":".join(dict.fromkeys(env["PATH"].split(":")))
            return env
        assert settings(image.attrs["Config"]) == settings(base)
        if name == "train":
            probe = client.containers.run(tag, entrypoint=["/bin/sh", "-c", "id -u; python -c 'import sklearn'"],
                                          remove=True, network_mode="none")
            assert probe.decode().split()[0] == "12574"
            return
        for part in ("inputs", "outputs"):
            (tmp_path / part).mkdir()
        source = tmp_path / samples()[0].name
        shutil.copy(samples()[0], source)
        (tmp_path / "inputs" / "data_path").write_text(str(source))
        (tmp_path / "inputs" / "schema").write_text(schemas.text())  # as flow.py passes it
        containers.prepare_tree(tmp_path)
        job = jobs.plan(dag_module.load(), jobs.Setup(code=ROOT), "test", None)[name]
        client.containers.run(tag, entrypoint=["/bin/sh", "-c", stage.command], user=containers.stage_user(), remove=True,
                              mounts=containers.mounts(job, tmp_path, [source]), network_mode="none")
        assert (tmp_path / "outputs" / "datasetA").read_bytes()[:4] == b"PAR1"
    finally:
        client.images.remove(tag, force=True)


def run_with(capsys, *options):
    code = cli.main(["environments", *options])
    out, err = capsys.readouterr()
    return code, out, err


def test_environments_an_organization_owns_are_created_private_to_it(records, domino, capsys):
    """Domino's public API makes an organization's environment as visibility Private with `orgOwnerId` (its
    NewEnvironmentV1: "Only used if visibility is 'Private'"); the organization is found by name among yours."""
    code, out, err = run_with(capsys, "--visibility", "Organization", "--organization", domino_server.ORG_NAME)
    assert code == 0, err
    creates = [r["body"] for r in domino.requests if r["path"] == CREATE]
    assert creates and all((b["visibility"], b["orgOwnerId"]) == ("Private", domino_server.ORG_ID) for b in creates)
    assert written()["applied"]["visibility"] == f"Organization ({domino_server.ORG_NAME})"
    assert "created Organization (iris-team): environment" in out
    # load_b existed before, Private: a revision cannot change that, and the run says so
    assert re.search(r"^load_b +stageflow-load-b +warning: it exists as Private, not Organization \(iris-team\): a "
                     r"revision keeps that; only a Domino admin can change an environment's visibility$", out, re.M)


@pytest.mark.parametrize("options, expected", [
    (["--visibility", "Team"], "error: VISIBILITY=Team: expected one of Private, Organization, Global\n"),
    (["--visibility", "Organization"], "error: VISIBILITY=Organization needs the organization: ORGANIZATION=<name>\n"),
    (["--organization", "iris-team"], "error: ORGANIZATION=iris-team is only for VISIBILITY=Organization\n"),
], ids=["unknown", "no-organization", "organization-alone"])
def test_a_wrong_visibility_is_one_line_and_writes_nothing(records, domino, capsys, options, expected):
    assert run_with(capsys, *options)[1:] == ("", expected)
    assert not environments.ENVIRONMENTS.exists() and sent(domino, "POST") == []


def test_an_organization_you_are_not_in_is_named(records, domino, capsys):
    code, _, err = run_with(capsys, "--visibility", "Organization", "--organization", "other-team")
    assert code == 1
    assert err == (f"error: ORGANIZATION=other-team: you are not a member of an organization of that name on "
                   f"{domino.host}/ (yours: {domino_server.ORG_NAME})\n")
    assert sent(domino, "POST") == []


def test_global_environments_are_for_admins(records, domino, capsys):
    code, _, err = run_with(capsys, "--visibility", "Global")
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("error: stage load_a, environment stageflow-load-a: Domino refused to create it Global: "
                          "only Domino admins make Global environments; use VISIBILITY=Organization "
                          "ORGANIZATION=<name>, or ask an admin (POST ")
    domino.admins.add("ada")
    assert run_with(capsys, "--visibility", "Global")[0] == 0
    assert {r["body"]["visibility"] for r in domino.requests if r["path"] == CREATE} == {"Global"}


def test_a_deployment_where_only_admins_create_environments_says_so(records, domino, capsys):
    domino.non_admins_create = False  # Domino's com.cerebro.domino.environments.canNonSysAdminsCreateEnvironments
    code, _, err = run_with(capsys)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("error: stage load_a, environment stageflow-load-a: Domino refused to let you create "
                          "it: on this deployment only Domino admins may create or edit "
                          "environments (the admin setting com.cerebro.domino.environments."
                          "canNonSysAdminsCreateEnvironments), or it is not yours; ask a Domino admin to run `make "
                          "environments` or to allow it (POST ")
    assert "You are not authorized to create compute environments" in err  # Domino's own words, kept


@pytest.mark.parametrize("which, text, said", [
    ("pushed.json", "{", "pushed.json: not JSON ("),
    ("pushed.json", "[]", "the record: expected an object, found list"),
    ("pushed.json", '{"registry": "r", "images": {"load_a": 5}, "versions": {}}', "the record.images.load_a: expected str"),
    ("pushed.json", '{"registry": "r", "images": {}, "versions": {}, "extra": 1}', "the record: unknown key 'extra'"),
    ("environments.json", '{"definitions": {"load_a": {"name": 1}}}', "the record.definitions.load_a.name: expected str"),
    ("environments.json", '{"definitions": {}, "applied": {"environments": {"load_a": {"revision_id": []}}}}',
     "the record.applied.environments.load_a.revision_id: expected str"),
])
def test_a_tampered_record_is_refused_in_one_line(records, capsys, which, text, said):
    """build/pushed.json and build/environments.json are read back as the typed records they were written as: a
    hand edit or a file cut short is one line that names the key and the command that writes a good one."""
    (environments.ENVIRONMENTS if which == "environments.json" else environments.PUSHED).write_text(text)
    code, out, err = run_with(capsys)
    assert code == 1 and "Traceback" not in err and len(err.splitlines()) == 1, err
    again = "make push REGISTRY=host:port/prefix" if which == "pushed.json" else "make environments"
    assert said in err, err
    assert err.rstrip().endswith(f"it was not written by `{again}` as it is: run that again"), err
