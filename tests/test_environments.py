"""`make environments` against a stand-in Domino API on 127.0.0.1: the definitions written for review, and
the requests python-domino's environment calls would send (no real Domino is reachable from here)."""

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stageflow import cli, environments
from stageflow.registry import STAGES

from conftest import ROOT

KEY = "secret-key"
CREATE = "/api/environments/beta/environments"


def pushed_record(tag: str = "") -> dict:
    registry = "127.0.0.1:5000/stageflow"
    return {"registry": registry,
            "images": {name: f"{registry}/{name.replace('_', '-')}@sha256:{hashlib.sha256((name + tag).encode()).hexdigest()}"
                       for name in STAGES},
            "versions": {name: stage.version for name, stage in STAGES.items()}}


@pytest.fixture
def records(tmp_path, monkeypatch):
    """build/pushed.json and build/environments.json, in a temporary build directory."""
    monkeypatch.setattr(environments, "BUILD", tmp_path)
    monkeypatch.setattr(environments, "PUSHED", tmp_path / "pushed.json")
    monkeypatch.setattr(environments, "ENVIRONMENTS", tmp_path / "environments.json")
    monkeypatch.delenv("DOMINO_API_HOST", raising=False)
    monkeypatch.delenv("DOMINO_USER_API_KEY", raising=False)

    def push(record):
        (tmp_path / "pushed.json").write_text(json.dumps(record))
    push(pushed_record())
    return push


class Handler(BaseHTTPRequestHandler):
    """Just the three endpoints python-domino uses for environments; every request is recorded."""

    def log_message(self, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_request(self):
        server = self.server
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        server.requests.append((self.command, self.path, body))
        if self.headers.get("X-Domino-Api-Key") != KEY:
            return self.reply(401, {"message": "unauthorised"})
        if (self.command, self.path) == ("GET", "/v1/environments"):
            return self.reply(200, {"objectType": "list", "data": server.environments})
        if (self.command, self.path) == ("POST", CREATE):
            if body["name"] == server.refuse:
                return self.reply(500, {"message": "image pull failed"})
            created = {"id": f"env-{len(server.environments)}", "name": body["name"]}
            server.environments.append(created)
            return self.reply(200, created)
        if self.command == "POST" and re.fullmatch(rf"{CREATE}/[\w-]+/revisions", self.path):
            return self.reply(200, {"id": f"rev-{len(server.requests)}"})
        return self.reply(404, {"message": "no such endpoint"})

    do_GET = do_POST = handle_request


@pytest.fixture
def domino(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.requests, server.refuse = [], None
    server.environments = [{"id": "env-dse", "name": "Domino Standard Environment"},
                           {"id": "env-b", "name": "stageflow-load-b"}]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    host = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("DOMINO_API_HOST", host + "/")
    monkeypatch.setenv("DOMINO_USER_API_KEY", KEY)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # a proxy set for real traffic must not see this
    server.host = host
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def run(capsys):
    code = cli.main(["environments"])
    out, err = capsys.readouterr()
    return code, out, err


def written():
    return json.loads(environments.ENVIRONMENTS.read_text())


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
        assert "ENV PATH=/opt/venv/bin:$PATH" in instructions and f"io.stageflow.version={stage.version}" in instructions
        assert stage.description in definition["description"] and stage.version in definition["description"]
        assert f"{name:8} {stage.environment:20} {definition['image']}" in out
    assert "are not both set, so nothing was sent to Domino" in out


def test_missing_environments_are_created_and_existing_ones_revised(records, domino, capsys):
    code, out, err = run(capsys)
    assert code == 0, err
    calls = [(method, path) for method, path, _ in domino.requests]
    assert calls == [("GET", "/v1/environments"), ("POST", CREATE), ("POST", f"{CREATE}/env-b/revisions"),
                     ("POST", CREATE), ("POST", CREATE), ("POST", CREATE)]
    defined = written()["definitions"]
    creates = [body for method, path, body in domino.requests if path == CREATE]
    assert [body["name"] for body in creates] == ["stageflow-load-a", "stageflow-merge", "stageflow-process",
                                                  "stageflow-train"]
    for body in creates:
        stage = next(name for name, d in defined.items() if d["name"] == body["name"])
        assert body["image"] == defined[stage]["image"]
        assert body["dockerfileInstructions"] == defined[stage]["dockerfileInstructions"]
        assert body["description"] == defined[stage]["description"]
        assert (body["visibility"], body["addBaseDependencies"], body["isRestricted"]) == ("Private", True, False)
    revision = domino.requests[2][2]
    assert revision["image"] == defined["load_b"]["image"] and "name" not in revision
    assert revision["dockerfileInstructions"] == defined["load_b"]["dockerfileInstructions"]
    applied = written()["applied"]
    assert applied["host"] == domino.host
    assert {name: e["environment_id"] for name, e in applied["environments"].items()} == {
        "load_a": "env-2", "load_b": "env-b", "merge": "env-3", "process": "env-4", "train": "env-5"}
    assert "load_b   stageflow-load-b     revision added (environment env-b)" in out
    assert "train    stageflow-train      created (environment env-5)" in out


def test_a_second_run_sends_only_what_changed(records, domino, capsys):
    run(capsys)
    del domino.requests[:]
    code, out, _ = run(capsys)
    assert code == 0 and [(m, p) for m, p, _ in domino.requests] == [("GET", "/v1/environments")]
    assert out.count("up to date") == 5
    new = pushed_record()
    new["images"]["merge"] = new["images"]["merge"].replace("@sha256:", "@sha256:f")[:-1]  # a new push of merge
    records(new)
    del domino.requests[:]
    run(capsys)
    assert [(m, p) for m, p, _ in domino.requests] == [("GET", "/v1/environments"), ("POST", f"{CREATE}/env-3/revisions")]
    assert domino.requests[1][2]["image"] == new["images"]["merge"]


def test_a_refused_request_stops_and_keeps_what_was_done(records, domino, capsys):
    domino.refuse = "stageflow-merge"
    code, _, err = run(capsys)
    assert code == 1
    assert err.startswith(f"error: stage merge, environment stageflow-merge: POST {domino.host}{CREATE}: HTTP 500 ")
    assert "image pull failed" in err
    assert set(written()["applied"]["environments"]) == {"load_a", "load_b"}
    domino.refuse = None
    del domino.requests[:]
    assert run(capsys)[0] == 0  # the retry does not add load_a and load_b again
    assert [body["name"] for _, path, body in domino.requests if path == CREATE] == [
        "stageflow-merge", "stageflow-process", "stageflow-train"]
    assert not [path for _, path, _ in domino.requests if path.endswith("/revisions")]


def test_a_wrong_key_is_reported(records, domino, capsys, monkeypatch):
    monkeypatch.setenv("DOMINO_USER_API_KEY", "wrong")
    code, _, err = run(capsys)
    assert code == 1 and f"GET {domino.host}/v1/environments: HTTP 401" in err


@pytest.mark.docker
def test_an_environment_built_from_its_definition_runs_the_flow_command(tmp_path):
    """What Domino builds (FROM the stage image, then the instructions) runs flow.py's command for the stage
    as Domino's user (when root), with a /workflow tree: through a shell, as a job's command, not the entrypoint."""
    import io
    import shutil

    from stageflow import containers, images

    client = images.client()
    stage = STAGES["load_a"]
    dockerfile = f"FROM {stage.image()}\n{environments.dockerfile_instructions(stage)}"
    tag = f"stageflow-environment-test:{stage.version}"
    image, _ = client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
    try:
        assert image.labels["io.stageflow.version"] == stage.version
        for part in ("inputs", "outputs"):
            (tmp_path / part).mkdir()
        source = tmp_path / "source_a.csv"
        shutil.copy(ROOT / "data" / "source_a.csv", source)
        (tmp_path / "inputs" / "data_path").write_text(str(source))
        containers.prepare_tree(tmp_path)
        client.containers.run(tag, entrypoint=["/bin/sh", "-c", stage.command], user=containers.stage_user(), remove=True,
                              mounts=containers.mounts(tmp_path, [source]), network_mode="none")
        assert (tmp_path / "outputs" / "datasetA").read_bytes()[:4] == b"PAR1"
    finally:
        client.images.remove(tag, force=True)
