"""python-domino, Domino's own client, against the stand-in Domino (tests/domino_server.py): it must start (it
asks /version, then the project's id) and make every call this project makes, and the stand-in must read its
requests and answer them as this project's client reads them. The client runs in a venv of its own (its pins
conflict with flytekit's), made offline from the wheelhouse `make test-wheels` downloads (tests/wheelhouses.py),
with tests/python_domino_calls.py."""

import json
import os
import subprocess

import pytest

import domino_server
import wheelhouses
from conftest import ROOT
from stageflow.domino import api as domino_api, environments
from stageflow.domino.api import items, unwrap

DEFINITION = {"name": "stageflow-merge", "image": "127.0.0.1:5000/stageflow/merge@sha256:" + "a" * 64,
              "dockerfileInstructions": "USER root\nLABEL x=y\nUSER 12574:12574\n", "description": "stageflow merge"}


@pytest.fixture(scope="module")
def client():
    """The Python of python-domino's venv."""
    minor = wheelhouses.PYTHON_DOMINO.pythons[0]
    python = wheelhouses.interpreter(minor)
    if python is None or wheelhouses.missing(wheelhouses.PYTHON_DOMINO, minor):
        (pytest.fail if os.environ.get("CI") else pytest.skip)(
            f"no Python {minor} or no python-domino wheelhouse ({wheelhouses.PYTHON_DOMINO.folder}): run `make test-wheels`")
    return wheelhouses.venv(wheelhouses.PYTHON_DOMINO, python) / "bin" / "python"


@pytest.fixture
def domino():
    with domino_server.running() as deployment:
        deployment.add_environment("Domino Standard Environment", visibility="Global")
        deployment.iris = deployment.add_dataset("iris", ["active", "pending"])
        yield deployment


def calls(client, how: str, url: str, domino, organization_id=None) -> dict:
    given = {"owner": domino_server.PROJECT_OWNER, "project": domino_server.PROJECT_NAME, "definition": DEFINITION,
             "credential": {"key": domino_server.KEY, "token": domino_server.TOKEN}.get(how),
             "dataset_id": domino.iris["id"], "organization_id": organization_id}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOMINO_", "PYTHON"))}
    proc = subprocess.run([str(client), str(ROOT / "tests" / "python_domino_calls.py"), how, url, json.dumps(given)],
                          env={**env, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("how", ["key", "token", "proxy"])
def test_python_domino_starts_and_makes_each_call_of_this_project(client, domino, how):
    url = domino.proxy if how == "proxy" else domino.host
    answers = calls(client, how, url, domino)
    sent = [(r["method"], r["path"]) for r in domino.requests]
    assert sent[:2] == [("GET", "/version"), ("GET", "/v4/gateway/projects/findProjectByOwnerAndName")]
    assert domino.requests[1]["query"] == {"ownerName": ["ada"], "projectName": ["iris-flows"]}
    assert (answers["version"], answers["project_id"]) == (domino_server.VERSION, domino_server.PROJECT_ID)
    expected_auth = {"key": {"X-Domino-Api-Key": domino_server.KEY},
                     "token": {"Authorization": f"Bearer {domino_server.TOKEN}"}, "proxy": {}}[how]
    assert all(r["auth"] == expected_auth and r["listener"] == ("proxy" if how == "proxy" else "host")
               for r in domino.requests)
    # Each answer as this project's client reads it.
    assert "Domino Standard Environment" in [e["name"] for e in items(answers["environments_list"], "data")]
    created = unwrap(answers["create_environment"], "environment")
    revision_id = unwrap(answers["create_environment_revision"], "environmentRevision")["id"]
    shown = unwrap(answers["get_environment"], "environment")
    assert shown["id"] == created["id"] and environments.revision(shown, revision_id)["id"] == revision_id
    tiers = [unwrap(t, "hardwareTier")["name"] for t in items(answers["hardware_tiers_list"], "hardwareTiers")]
    assert tiers == [t["name"] for t in domino.tiers]
    assert [o["name"] for o in items(answers["organizations"], "orgs")] == [domino_server.ORG_NAME]
    assert [unwrap(d, "dataset")["id"] for d in items(answers["datasets"], "datasets")] == [domino.iris["id"]]
    assert answers["datasets"]["metadata"]["totalCount"] == 1
    assert [s["status"] for s in items(answers["snapshots"], "snapshots")] == ["active", "pending"]


def test_python_domino_and_this_project_send_the_same_bodies(client, domino, monkeypatch):
    """create_environment and create_environment_revision, from python-domino and from stageflow, for the same
    definition (an organization's environment: Private with orgOwnerId)."""
    calls(client, "key", domino.host, domino, organization_id=domino_server.ORG_ID)
    theirs = [r["body"] for r in domino.requests if r["method"] == "POST"]
    del domino.requests[:]
    api = domino_api.connect({"DOMINO_API_HOST": domino.host, "DOMINO_USER_API_KEY": domino_server.KEY})
    wanted = environments.Visibility("Organization", domino_server.ORG_NAME, domino_server.ORG_ID)
    environment_id, _ = environments.create(api, {**DEFINITION}, wanted)
    environments.revise(api, environment_id, DEFINITION, wanted)
    ours = [r["body"] for r in domino.requests if r["method"] == "POST"]
    assert len(theirs) == len(ours) == 2
    assert ours == theirs
    assert ours[0]["orgOwnerId"] == domino_server.ORG_ID and ours[0]["visibility"] == "Private"
