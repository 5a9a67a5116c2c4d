"""A stand-in Domino deployment on 127.0.0.1, behaving as Domino does in what this project touches.

Two listeners share one deployment: the API host as a user outside reaches it (an API key or a personal access
token required on every request), and a run's API proxy (`DOMINO_API_PROXY`: no credentials needed, since the
proxy adds them; it also serves the run's token at /access-token). Routes, payloads and envelopes are those
python-domino and public clients use (docs/domino.md lists the sources):
- environments: GET /v1/environments (`{"objectType": "list", "data": [...]}`); POST
  /api/environments/beta/environments (flat body, answered `{"environment": ..., "metadata": ...}`); POST
  .../environments/{id}/revisions (flat body, answered `{"environmentRevision": ...}`); GET
  /api/environments/v1/environments/{id} (`{"environment": ...}` with `latestRevision` and `selectedRevision`,
  404 for an unknown id). Environment and revision ids are distinct 24-hex ids, as Domino's are.
- builds are asynchronous: a revision goes through the statuses of its build script, one step each time a
  client reads its environment (so a test never depends on timing), and becomes the active (`selectedRevision`)
  one when it succeeds; a failed build keeps the previous active revision and says why.
- hardware tiers: GET /v4/projects/{projectId}/hardwareTiers (`[{"hardwareTier": {...}}]`); the deployment-wide
  /api/hardwaretiers/v1/hardwaretiers answers 403, as it does to non-admins.
- datasets: GET /api/datasetrw/v2/datasets (`{"datasets": [{"dataset": ...}]}`) and
  /api/datasetrw/v1/datasets/{id}/snapshots (`{"snapshots": [...]}`), both paged with offset/limit.
Error bodies (`{"errors": [...]}`) and the failed build's `statusMessage` are guesses: Domino's are not
documented where this project could read them.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import uuid
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

KEY, TOKEN, RUN_TOKEN = "secret-key", "personal-access-token", "run-jwt"
PROJECT_ID = "65f1c0de0000000000000001"
BUILD = ["Queued", "Building", "Building", "Succeeded"]  # the statuses a build goes through, one per read
FAILED_BUILD = ["Queued", "Building", "Failed"]
CREATE_PATH = "/api/environments/beta/environments"


def new_id() -> str:
    return uuid.uuid4().hex[:24]


class Deployment:
    """What the deployment holds; tests read and change it directly."""

    def __init__(self):
        self.lock = threading.Lock()
        self.environments: dict[str, dict] = {}
        self.revisions: dict[str, dict] = {}
        self.builds: dict[str, list[str]] = {}  # environment name -> build script of its next revisions
        self.tiers = [{"id": "small-k8s", "name": "Small"}, {"id": "medium-k8s", "name": "Medium"},
                      {"id": "large-k8s", "name": "Large"}, {"id": "gpu-k8s", "name": "GPU"}]
        self.datasets: list[dict] = []
        self.requests: list[dict] = []  # every request: listener, method, path, auth headers, body
        self.refuse: set[str] = set()  # environment names whose create/revise answers 500
        self.bare = False  # answer as older routes do: objects without their envelope, a new one without revision

    # -------------------------------------------------------------- set-up helpers for tests

    def add_environment(self, name: str, image: str = "quay.io/domino/standard-environment:ubuntu22") -> dict:
        environment = {"id": new_id(), "name": name, "archived": False, "visibility": "Private", "revisions": []}
        self.environments[environment["id"]] = environment
        self.add_revision(environment, {"image": image, "dockerfileInstructions": ""}, ["Succeeded"])
        return environment

    def add_dataset(self, name: str, statuses: list[str], project_id: str = PROJECT_ID) -> dict:
        dataset = {"id": new_id(), "name": name, "projectId": project_id, "description": "", "snapshots": []}
        start = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
        for n, status in enumerate(statuses):
            dataset["snapshots"].append({"id": new_id(), "datasetId": dataset["id"], "creatorId": new_id(),
                                         "status": status,
                                         "createdAt": (start + dt.timedelta(days=n)).isoformat().replace("+00:00", "Z")})
        self.datasets.append(dataset)
        return dataset

    def add_revision(self, environment: dict, body: dict, script: list[str]) -> dict:
        revision = {"id": new_id(), "number": len(environment["revisions"]) + 1, "image": body["image"],
                    "dockerfileInstructions": body.get("dockerfileInstructions", ""), "script": list(script), "step": 0}
        environment["revisions"].append(revision)
        self.revisions[revision["id"]] = revision
        return revision

    # -------------------------------------------------------------- views as the API shows them

    @staticmethod
    def status(revision: dict) -> str:
        return revision["script"][min(revision["step"], len(revision["script"]) - 1)]

    def revision_view(self, revision: dict) -> dict:
        view = {"id": revision["id"], "number": revision["number"], "status": self.status(revision),
                "image": revision["image"]}
        if view["status"] == "Failed":
            view["statusMessage"] = "Step 4/7 : RUN pip install ... returned a non-zero code: 1"
        return view

    def environment_view(self, environment: dict) -> dict:
        built = [r for r in environment["revisions"] if self.status(r) == "Succeeded"]
        view = {key: environment[key] for key in ("id", "name", "archived", "visibility")}
        view.update({"supportedClusters": [], "rebuildOnBaseChanges": "Never", "owner": {"id": new_id()},
                     "latestRevision": self.revision_view(environment["revisions"][-1])})
        if built:
            view["selectedRevision"] = self.revision_view(built[-1])  # auto-activated once built
        return view

    def observe(self, environment: dict) -> None:
        """A build moves on by one status each time a client reads its environment."""
        for revision in environment["revisions"]:
            revision["step"] += 1

    # -------------------------------------------------------------- the routes

    def route(self, method: str, path: str, query: dict, body) -> tuple[int, object]:
        envelope = {"metadata": {"requestId": new_id(), "notices": []}}
        if (method, path) == ("GET", "/v1/environments"):
            return 200, {"objectType": "list", "data": [{"id": e["id"], "name": e["name"]}
                                                        for e in self.environments.values() if not e["archived"]]}
        if (method, path) == ("POST", CREATE_PATH):
            missing = [key for key in ("name", "image", "visibility") if not body.get(key)]
            if missing:
                return 400, {"errors": [f"missing {', '.join(missing)}"]}
            if body["name"] in self.refuse:
                return 500, {"errors": ["image pull failed"]}
            environment = {"id": new_id(), "name": body["name"], "archived": False, "visibility": body["visibility"],
                           "revisions": []}
            self.environments[environment["id"]] = environment
            self.add_revision(environment, body, self.builds.get(body["name"], BUILD))
            if self.bare:
                return 200, {key: environment[key] for key in ("id", "name", "visibility")}
            return 200, {"environment": self.environment_view(environment), **envelope}
        match = re.fullmatch(rf"{CREATE_PATH}/(\w+)/revisions", path)
        if method == "POST" and match:
            environment = self.environments.get(match[1])
            if environment is None:
                return 404, {"errors": [f"environment {match[1]} not found"]}
            if not body.get("image") or "name" in body:
                return 400, {"errors": ["a revision takes image and no name"]}
            if environment["name"] in self.refuse:
                return 500, {"errors": ["image pull failed"]}
            revision = self.add_revision(environment, body, self.builds.get(environment["name"], BUILD))
            view = self.revision_view(revision)
            return 200, view if self.bare else {"environmentRevision": view, **envelope}
        match = re.fullmatch(r"/api/environments/v1/environments/(\w+)", path)
        if method == "GET" and match:
            environment = self.environments.get(match[1])
            if environment is None:
                return 404, {"errors": [f"environment {match[1]} not found"]}
            view = self.environment_view(environment)
            self.observe(environment)
            return 200, view if self.bare else {"environment": view, **envelope}
        if method == "GET" and path == f"/v4/projects/{PROJECT_ID}/hardwareTiers":
            return 200, [{"hardwareTier": {**tier, "isDefault": tier["name"] == "Small"}} for tier in self.tiers]
        if method == "GET" and path == "/api/hardwaretiers/v1/hardwaretiers":
            return 403, {"errors": ["Forbidden"]}
        if method == "GET" and path == "/api/datasetrw/v2/datasets":
            listed = [{"dataset": {k: v for k, v in d.items() if k != "snapshots"}} for d in self.datasets]
            return 200, {"datasets": page(listed, query), **envelope}
        match = re.fullmatch(r"/api/datasetrw/v1/datasets/(\w+)/snapshots", path)
        if method == "GET" and match:
            dataset = next((d for d in self.datasets if d["id"] == match[1]), None)
            if dataset is None:
                return 404, {"errors": [f"dataset {match[1]} not found"]}
            return 200, {"snapshots": page(dataset["snapshots"], query), **envelope}
        return 404, {"errors": [f"no route {method} {path}"]}


def page(found: list, query: dict) -> list:
    offset, limit = int(query.get("offset", ["0"])[0]), int(query.get("limit", ["10"])[0])
    return found[offset:offset + limit]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status: int, body, content_type: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_request(self) -> None:
        deployment, listener = self.server.deployment, self.server.listener
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        auth = {k: v for k, v in self.headers.items() if k.lower() in ("x-domino-api-key", "authorization")}
        with deployment.lock:
            deployment.requests.append({"listener": listener, "method": self.command, "path": url.path,
                                        "auth": auth, "body": body})
            if listener == "proxy" and url.path == "/access-token":
                return self.reply(200, RUN_TOKEN, "text/plain")
            if listener == "host" and not (auth.get("X-Domino-Api-Key") == KEY or auth.get("Authorization") in (
                    f"Bearer {TOKEN}", f"Bearer {RUN_TOKEN}")):
                return self.reply(401, {"errors": ["Unauthorized"]})
            status, answer = deployment.route(self.command, url.path, parse_qs(url.query), body)
        self.reply(status, answer)

    do_GET = do_POST = do_PATCH = do_DELETE = handle_request


@contextmanager
def running():
    """The deployment with its host and proxy listeners on free ports; stopped whatever happens."""
    deployment = Deployment()
    servers, threads = [], []
    try:
        for listener in ("host", "proxy"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            server.deployment, server.listener = deployment, listener
            servers.append(server)
            threads.append(threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True))
            threads[-1].start()
        deployment.host, deployment.proxy = (f"http://127.0.0.1:{s.server_address[1]}" for s in servers)
        yield deployment
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def workspace(deployment: Deployment) -> dict[str, str]:
    """The variables Domino sets in a workspace run on the project (values as public captures show them)."""
    return {"DOMINO_API_HOST": "http://nucleus-frontend.domino-platform:80", "DOMINO_API_PROXY": deployment.proxy,
            "DOMINO_PROJECT_ID": PROJECT_ID, "DOMINO_PROJECT_OWNER": "ada", "DOMINO_PROJECT_NAME": "iris-flows",
            "DOMINO_RUN_ID": new_id(), "DOMINO_STARTING_USERNAME": "ada", "DOMINO_USER_NAME": "ada",
            "DOMINO_IS_GIT_BASED": "true", "DOMINO_WORKING_DIR": "/mnt/code", "DOMINO_DATASETS_DIR": "/mnt/data",
            "DOMINO_USER_API_KEY": "a-key-being-phased-out", "DOMINO_IS_WORKFLOW_JOB": "false"}
