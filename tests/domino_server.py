"""A stand-in Domino deployment on 127.0.0.1, behaving as Domino does in what this project touches.

Two listeners share one deployment: the API host as a user outside reaches it (an API key or a personal access
token required on every request), and a run's API proxy (`DOMINO_API_PROXY`: no credentials needed, since the
proxy adds them; it also serves the run's token at /access-token). Each request is made as a user: the owner of
the credential, or the run's user through the proxy. Routes, payloads and envelopes are those python-domino
(Domino's own client, tests/test_python_domino.py runs it against this) and Domino's public API, as its
generated client has it (dominodatalab/AutoML_Extension, automl-service/app/api/generated/
domino_public_api_client), send and read; docs/domino.md lists the sources:
- what python-domino asks as it starts: GET /version (`{"version": ...}`) and, for a project's id,
  GET /v4/gateway/projects/findProjectByOwnerAndName?ownerName=...&projectName=... (`{"id": ...}`).
- environments: GET /v1/environments (`{"objectType": "list", "data": [...]}`, those the user may see); POST
  /api/environments/beta/environments (python-domino's flat body, visibility Private or Global, `orgOwnerId`
  for an environment an organization owns; answered `{"environment": ..., "metadata": ...}`); POST
  .../environments/{id}/revisions (answered `{"environmentRevision": ...}`); GET
  /api/environments/v1/environments/{id} (`{"environment": ...}` with `latestRevision`, `selectedRevision`
  and visibility private, organization or global). Environment and revision ids are distinct 24-hex ids.
- who may do what: a Private environment is its owner's, one an organization owns its members'; Global ones are
  everyone's and only an admin makes them; with `non_admins_create = False` (Domino's central-config key
  com.cerebro.domino.environments.canNonSysAdminsCreateEnvironments) only admins create or revise any.
- builds are asynchronous: a revision goes through the statuses of its build script, one step each time a
  client reads its environment (so a test never depends on timing), and becomes the active (`selectedRevision`)
  one when it succeeds; a failed build keeps the previous active revision and says why.
- hardware tiers: GET /v4/projects/{projectId}/hardwareTiers (`[{"hardwareTier": {...}}]`); the deployment-wide
  /api/hardwaretiers/v1/hardwaretiers answers 403, as it does to non-admins.
- organizations: GET /api/organizations/v1/organizations (`{"orgs": [{"id", "name"}]}`, the user's).
- datasets: GET /api/datasetrw/v2/datasets (`{"datasets": [{"dataset": ...}], "metadata": {..., "offset",
  "limit", "totalCount"}}`, filtered by `projectIdsToInclude`) and /api/datasetrw/v1/datasets/{id}/snapshots
  (`{"snapshots": [...], "metadata": ...}`), both paged with offset and limit, the limit capped at PAGE_CAP;
  snapshots as SnapshotDetailsV1 (id, datasetId, createdAt, creatorId, status: active, pending, copying,
  failed, markForDeletion, deletionInProgress, deleted), without a number unless `numbered` is set.
Guesses, since Domino's are not documented where this project could read them: error bodies
(`{"errors": [...]}`), the failed build's `statusMessage`, 403 (not 404) for an environment that exists but is
not the user's to see, the snapshot field `version` when `numbered` is set, and /version's other fields.
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
TEAMMATE_TOKEN = "teammate-token"  # bob's personal access token; the others are ada's
USERS = {f"X-Domino-Api-Key {KEY}": "ada", f"Bearer {TOKEN}": "ada", f"Bearer {RUN_TOKEN}": "ada",
         f"Bearer {TEAMMATE_TOKEN}": "bob"}
PROJECT_ID, PROJECT_OWNER, PROJECT_NAME = "65f1c0de0000000000000001", "ada", "iris-flows"
ORG_ID, ORG_NAME = "65f1c0de00000000000000aa", "iris-team"
VERSION = "6.1.2"
PAGE_CAP = 25  # the most items a list answers with, whatever limit was asked for
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
        self.admins: set[str] = set()
        self.non_admins_create = True
        self.orgs = [{"id": ORG_ID, "name": ORG_NAME, "members": ["ada", "bob"]}]
        self.proxy_user = "ada"  # whose run the proxy belongs to
        self.numbered = False  # snapshots carry a number (`version`): none of Domino's public answers shows one

    # -------------------------------------------------------------- set-up helpers for tests

    def add_environment(self, name: str, image: str = "quay.io/domino/standard-environment:ubuntu22",
                        owner: str = "ada", visibility: str = "Private", org: str | None = None) -> dict:
        environment = {"id": new_id(), "name": name, "archived": False, "visibility": visibility, "owner": owner,
                       "org": org, "revisions": []}
        self.environments[environment["id"]] = environment
        self.add_revision(environment, {"image": image, "dockerfileInstructions": ""}, ["Succeeded"])
        return environment

    def add_dataset(self, name: str, statuses: list[str], project_id: str = PROJECT_ID,
                    numbers: list[int] | None = None) -> dict:
        """A dataset with a snapshot per status, numbered 1, 2, ... unless `numbers` says otherwise (shown only
        when the deployment is `numbered`)."""
        dataset = {"id": new_id(), "name": name, "projectId": project_id, "description": "", "snapshots": []}
        start = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
        for n, status in enumerate(statuses):
            dataset["snapshots"].append({"id": new_id(), "datasetId": dataset["id"], "creatorId": new_id(),
                                         "status": status, "number": numbers[n] if numbers else n + 1,
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

    @staticmethod
    def visibility(environment: dict) -> str:
        """As EnvironmentVisibilityV1 spells it: private, organization or global."""
        return "organization" if environment["org"] else environment["visibility"].lower()

    def visible(self, environment: dict, user: str) -> bool:
        org = next((o for o in self.orgs if o["id"] == environment["org"]), None)
        return (environment["visibility"].lower() == "global" or environment["owner"] == user
                or user in self.admins or bool(org and user in org["members"]))

    def environment_view(self, environment: dict) -> dict:
        built = [r for r in environment["revisions"] if self.status(r) == "Succeeded"]
        view = {key: environment[key] for key in ("id", "name", "archived")}
        owner = ({"id": environment["org"], "ownerType": "organization"} if environment["org"] else
                 {"id": environment["owner"], "ownerType": "individual"})
        view.update({"visibility": self.visibility(environment), "supportedClusters": [],
                     "rebuildOnBaseChanges": "Never", "owner": owner,
                     "latestRevision": self.revision_view(environment["revisions"][-1])})
        if built:
            view["selectedRevision"] = self.revision_view(built[-1])  # auto-activated once built
        return view

    def observe(self, environment: dict) -> None:
        """A build moves on by one status each time a client reads its environment."""
        for revision in environment["revisions"]:
            revision["step"] += 1

    # -------------------------------------------------------------- the routes

    def snapshot_view(self, snapshot: dict) -> dict:
        view = {k: v for k, v in snapshot.items() if k != "number"}
        return {**view, "version": snapshot["number"]} if self.numbered else view

    def route(self, method: str, path: str, query: dict, body, user: str) -> tuple[int, object]:
        envelope = {"metadata": {"requestId": new_id(), "notices": []}}
        if (method, path) == ("GET", "/version"):
            return 200, {"version": VERSION, "buildId": "stand-in", "commitId": "0" * 40}
        if (method, path) == ("GET", "/v4/gateway/projects/findProjectByOwnerAndName"):
            if (query.get("ownerName"), query.get("projectName")) != ([PROJECT_OWNER], [PROJECT_NAME]):
                return 404, {"errors": ["project not found"]}
            return 200, {"id": PROJECT_ID, "name": PROJECT_NAME, "ownerUsername": PROJECT_OWNER}
        if (method, path) == ("GET", "/v1/environments"):
            return 200, {"objectType": "list", "data": [
                {"id": e["id"], "name": e["name"], "visibility": self.visibility(e).capitalize()}
                for e in self.environments.values() if not e["archived"] and self.visible(e, user)]}
        if (method, path) == ("GET", "/api/organizations/v1/organizations"):
            return 200, {"orgs": [{"id": o["id"], "name": o["name"]} for o in self.orgs if user in o["members"]]}
        if method == "POST" and (path == CREATE_PATH or path.startswith(CREATE_PATH + "/")) and \
                not (self.non_admins_create or user in self.admins):
            return 403, {"errors": ["You are not authorized to create compute environments. Please contact your "
                                    "Domino Admin if you have any questions."]}
        if (method, path) == ("POST", CREATE_PATH):
            missing = [key for key in ("name", "image", "visibility") if not body.get(key)]
            if missing:
                return 400, {"errors": [f"missing {', '.join(missing)}"]}
            visibility = str(body["visibility"]).lower()  # python-domino: "Private"; the public API: "private"
            if visibility not in ("private", "global"):
                return 400, {"errors": [f"visibility {body['visibility']}: expected private or global"]}
            if visibility == "global" and user not in self.admins:
                return 403, {"errors": ["Only administrators can create global environments"]}
            org = body.get("orgOwnerId")
            if org and not any(o["id"] == org and user in o["members"] for o in self.orgs):
                return 403, {"errors": [f"not a member of organization {org}"]}
            if body["name"] in self.refuse:
                return 500, {"errors": ["image pull failed"]}
            environment = {"id": new_id(), "name": body["name"], "archived": False,
                           "visibility": visibility.capitalize(), "owner": user, "org": org, "revisions": []}
            self.environments[environment["id"]] = environment
            self.add_revision(environment, body, self.builds.get(body["name"], BUILD))
            if self.bare:
                return 200, {"id": environment["id"], "name": environment["name"],
                             "visibility": self.visibility(environment)}
            return 200, {"environment": self.environment_view(environment), **envelope}
        match = re.fullmatch(rf"{CREATE_PATH}/(\w+)/revisions", path)
        if method == "POST" and match:
            environment = self.environments.get(match[1])
            if environment is None:
                return 404, {"errors": [f"environment {match[1]} not found"]}
            if not self.visible(environment, user):
                return 403, {"errors": [f"environment {match[1]}: not permitted"]}
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
            if not self.visible(environment, user):
                return 403, {"errors": [f"environment {match[1]}: not permitted"]}
            view = self.environment_view(environment)
            self.observe(environment)
            return 200, view if self.bare else {"environment": view, **envelope}
        if method == "GET" and path == f"/v4/projects/{PROJECT_ID}/hardwareTiers":
            return 200, [{"hardwareTier": {**tier, "isDefault": tier["name"] == "Small"}} for tier in self.tiers]
        if method == "GET" and path == "/api/hardwaretiers/v1/hardwaretiers":
            return 403, {"errors": ["Forbidden"]}
        if method == "GET" and path == "/api/datasetrw/v2/datasets":
            wanted = query.get("projectIdsToInclude")
            listed = [{"dataset": {k: v for k, v in d.items() if k != "snapshots"}} for d in self.datasets
                      if not wanted or d["projectId"] in wanted]
            found, metadata = page(listed, query)
            return 200, {"datasets": found, "metadata": {**envelope["metadata"], **metadata}}
        match = re.fullmatch(r"/api/datasetrw/v1/datasets/(\w+)/snapshots", path)
        if method == "GET" and match:
            dataset = next((d for d in self.datasets if d["id"] == match[1]), None)
            if dataset is None:
                return 404, {"errors": [f"dataset {match[1]} not found"]}
            found, metadata = page([self.snapshot_view(s) for s in dataset["snapshots"]], query)
            return 200, {"snapshots": found, "metadata": {**envelope["metadata"], **metadata}}
        return 404, {"errors": [f"no route {method} {path}"]}


def page(found: list, query: dict) -> tuple[list, dict]:
    """One page of a list and the metadata Domino's paginated envelopes carry (PaginatedMetadataV1)."""
    offset, limit = int(query.get("offset", ["0"])[0]), int(query.get("limit", ["10"])[0])
    limit = min(limit, PAGE_CAP)
    return found[offset:offset + limit], {"offset": offset, "limit": limit, "totalCount": len(found)}


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
        auth = {k: self.headers[k] for k in ("X-Domino-Api-Key", "Authorization") if self.headers.get(k)}
        with deployment.lock:
            deployment.requests.append({"listener": listener, "method": self.command, "path": url.path,
                                        "query": parse_qs(url.query), "auth": auth, "body": body})
            if listener == "proxy" and url.path == "/access-token":
                return self.reply(200, RUN_TOKEN, "text/plain")
            credential = (f"X-Domino-Api-Key {auth['X-Domino-Api-Key']}" if auth.get("X-Domino-Api-Key")
                          else auth.get("Authorization"))
            user = deployment.proxy_user if listener == "proxy" else USERS.get(credential)
            if user is None:
                return self.reply(401, {"errors": ["Unauthorized"]})
            status, answer = deployment.route(self.command, url.path, parse_qs(url.query), body, user)
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
            "DOMINO_PROJECT_ID": PROJECT_ID, "DOMINO_PROJECT_OWNER": PROJECT_OWNER, "DOMINO_PROJECT_NAME": PROJECT_NAME,
            "DOMINO_RUN_ID": new_id(), "DOMINO_STARTING_USERNAME": deployment.proxy_user,
            "DOMINO_USER_NAME": deployment.proxy_user,
            "DOMINO_IS_GIT_BASED": "true", "DOMINO_WORKING_DIR": "/mnt/code", "DOMINO_DATASETS_DIR": "/mnt/data",
            "DOMINO_USER_API_KEY": "a-key-being-phased-out", "DOMINO_IS_WORKFLOW_JOB": "false"}
