"""Domino custom environments for the stages: one per stage, built on that stage's pushed image.

A Domino environment revision is a base image plus Dockerfile instructions (without FROM). Each stage's
environment takes its image by digest from the last `make push` (build/pushed.json), so a revision names the
very image that was built and tested. `make environments` writes the definitions to build/environments.json
(commit it with build/pushed.json: the commit Domino pins then says which images its environments run) and,
with DOMINO_API_HOST and DOMINO_USER_API_KEY set, creates each missing environment or adds a revision to an
existing one, recording what it did in the same file.

The requests are python-domino's (PyPI `dominodatalab` 2.2.0: `Domino.environments_list`,
`create_environment`, `create_environment_revision`): same endpoints, payload fields and API-key header.
The package itself is not used: it pins packaging==23.2 and python-dateutil~=2.8.2, which would downgrade
what flytekit and pandas run on here, and its client insists on an owner/project and a /version round trip
before it sends anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from stageflow.images import BUILD, PUSHED
from stageflow.registry import IMAGE_CODE_DIR, ROOT, STAGES, Stage

ENVIRONMENTS = BUILD / "environments.json"
HOST_ENV, KEY_ENV = "DOMINO_API_HOST", "DOMINO_USER_API_KEY"
VISIBILITY = "Private"  # python-domino: "Private" or "Global"


class DominoError(Exception):
    """A missing precondition or a refused request, as one line that says what to do."""


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def push_problems(pushed: dict | None) -> list[str]:
    """Why the last push does not hold the images of the current code (empty when it does)."""
    if pushed is None:
        return [f"no images pushed ({shown(PUSHED)} missing): run `make push REGISTRY=host:port/prefix`"]
    versions, images = pushed.get("versions", {}), pushed.get("images", {})
    stale = [f"{name} (pushed {versions.get(name, 'never')}, code at {stage.version})"
             for name, stage in STAGES.items() if versions.get(name) != stage.version or name not in images]
    if stale:
        return [f"images pushed for another version of the code: {', '.join(stale)}; "
                f"run `make push REGISTRY={pushed.get('registry', 'host:port/prefix')}`"]
    return []


def dockerfile_instructions(stage: Stage) -> str:
    """Everything the stage needs is in its image; restating its environment keeps layers that Domino adds
    on top (its base dependencies) from putting another Python ahead of the stage's venv."""
    return (f"# stageflow stage {stage.name}, image version {stage.version}: code and libraries are in the image\n"
            f"ENV PATH=/opt/venv/bin:$PATH PYTHONPATH={IMAGE_CODE_DIR} PYTHONUNBUFFERED=1 WORKFLOW_ROOT=/workflow\n"
            f"LABEL io.stageflow.stage={stage.name} io.stageflow.version={stage.version}\n")


def definitions(pushed: dict) -> dict[str, dict]:
    """Per stage: the environment's name, base image (by digest), Dockerfile instructions and description."""
    return {name: {"name": stage.environment, "image": pushed["images"][name],
                   "dockerfileInstructions": dockerfile_instructions(stage),
                   "description": f"stageflow {name}: {stage.description} (image version {stage.version})"}
            for name, stage in STAGES.items()}


def environment_problems(record: dict | None, pushed: dict | None, host: str | None) -> list[str]:
    """Why the Domino environments are not known to be defined for the last push (empty when they are)."""
    create = f"run `make environments` with {HOST_ENV} and {KEY_ENV} set"
    if record is None:
        return [f"no environment definitions ({shown(ENVIRONMENTS)} missing): {create}"]
    if pushed is not None and not push_problems(pushed) and record.get("definitions") != definitions(pushed):
        return [f"{shown(ENVIRONMENTS)} does not match the last push: {create}"]
    applied = record.get("applied") or {}
    images = {name: d.get("image") for name, d in (record.get("definitions") or {}).items()}
    done = {name: d.get("image") for name, d in (applied.get("environments") or {}).items()}
    behind = [name for name in STAGES if not images.get(name) or done.get(name) != images[name]]
    if behind:
        return [f"Domino environments not created or revised for the last push ({', '.join(behind)}): {create}"]
    if host and applied.get("host") != host.rstrip("/"):
        return [f"environments were created on {applied.get('host')}, not on {host}: {create}"]
    return []


class DominoApi:
    """The three environment calls python-domino makes (see the module's docstring), through requests."""

    def __init__(self, host: str, api_key: str, timeout: float = 30.0):
        import requests

        self.host, self.timeout = host.rstrip("/"), timeout
        self.session = requests.Session()
        self.session.headers.update({"X-Domino-Api-Key": api_key, "Accept": "application/json"})

    def _call(self, method: str, path: str, body: dict | None = None):
        import requests

        try:
            response = self.session.request(method, self.host + path, json=body, timeout=self.timeout)
        except requests.RequestException as err:
            raise DominoError(f"{method} {self.host}{path}: {err}") from None
        if not response.ok:
            raise DominoError(f"{method} {self.host}{path}: HTTP {response.status_code} {' '.join(response.text.split())[:300]}")
        return response.json()

    def environments(self) -> list[dict]:
        found = self._call("GET", "/v1/environments")  # a list, or {"objectType": "list", "data": [...]}
        return found["data"] if isinstance(found, dict) else found

    @staticmethod
    def revision(definition: dict) -> dict:
        return {"dockerfileInstructions": definition["dockerfileInstructions"], "environmentVariables": [],
                "image": definition["image"], "postRunScript": "", "postSetupScript": "", "preRunScript": "",
                "preSetupScript": "", "skipCache": False, "summary": definition["description"],
                "supportedClusters": [], "tags": [], "useVpn": False, "workspaceTools": []}

    def create(self, definition: dict) -> dict:
        # addBaseDependencies: Domino adds what its jobs need to an image that is not one of its own.
        return self._call("POST", "/api/environments/beta/environments", {
            **self.revision(definition), "name": definition["name"], "visibility": VISIBILITY,
            "addBaseDependencies": True, "description": definition["description"], "isRestricted": False})

    def revise(self, environment_id: str, definition: dict) -> dict:
        return self._call("POST", f"/api/environments/beta/environments/{environment_id}/revisions",
                          self.revision(definition))


def apply(defined: dict[str, dict], api: DominoApi, before: dict) -> list[str]:
    """Create or revise each stage's environment, skipping one whose applied image is unchanged; returns
    a line per stage. The record is written after every request, so a re-run after a refused request
    does not add the same revisions twice."""
    by_name: dict[str, list[dict]] = {}
    for found in api.environments():
        by_name.setdefault(found.get("name"), []).append(found)
    done = dict(before.get("environments", {})) if before.get("host") == api.host else {}
    applied = {"host": api.host, "environments": done}
    lines = []
    for stage, definition in defined.items():
        name, matches, last = definition["name"], by_name.get(definition["name"], []), done.get(stage, {})
        if len(matches) > 1:
            raise DominoError(f"{len(matches)} environments on {api.host} are named {name}; archive all but one")
        if matches and last.get("environment_id") == matches[0].get("id") and last.get("image") == definition["image"]:
            lines.append(f"{stage:8} {name:20} up to date (environment {last['environment_id']})")
            continue
        try:
            if matches:
                environment_id, action = matches[0]["id"], "revision added"
                answer = api.revise(environment_id, definition)
            else:
                answer = api.create(definition)
                environment_id, action = answer.get("id"), "created"
        except DominoError as err:
            raise DominoError(f"stage {stage}, environment {name}: {err}") from None
        done[stage] = {"environment_id": environment_id, "image": definition["image"], "answer_id": answer.get("id")}
        write(defined, applied)
        lines.append(f"{stage:8} {name:20} {action} (environment {environment_id})")
    return lines


def write(defined: dict[str, dict], applied: dict | None) -> None:
    BUILD.mkdir(exist_ok=True)
    ENVIRONMENTS.write_text(json.dumps({"definitions": defined, "applied": applied}, indent=2) + "\n")


def run(env=os.environ) -> list[str]:
    """`make environments`: write the definitions, and create them on Domino when credentials are set."""
    pushed = read_record(PUSHED)
    problems = push_problems(pushed)
    if problems:
        raise DominoError(problems[0])
    defined = definitions(pushed)
    before = (read_record(ENVIRONMENTS) or {}).get("applied") or {}
    write(defined, before or None)
    lines = [f"{stage:8} {d['name']:20} {d['image']}" for stage, d in defined.items()]
    if not (env.get(HOST_ENV) and env.get(KEY_ENV)):
        return lines + [f"written to {shown(ENVIRONMENTS)}; {HOST_ENV} and {KEY_ENV} are not both set, so "
                        f"nothing was sent to Domino"]
    api = DominoApi(env[HOST_ENV], env[KEY_ENV])
    lines += apply(defined, api, before)
    return lines + [f"written to {shown(ENVIRONMENTS)}, with what was done on {api.host}"]
