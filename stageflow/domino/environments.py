"""Domino custom environments for the stages: one per stage, built on that stage's pushed image.

A Domino environment revision is a base image plus Dockerfile instructions (without FROM). Each stage's
environment takes its image by digest from the last `make push` (build/pushed.json), so a revision names the
very image that was built and tested. `make environments` writes the definitions to build/environments.json
and, where it can reach Domino's API (see stageflow/domino/api.py), creates each missing environment or adds a
revision to an existing one, then waits for Domino to build each revision: Domino builds them asynchronously,
and a job runs whatever revision is active unless its task pins one. The record keeps, per stage, the
environment's id and the id of the revision built from this push, so flow.py can pin exactly that revision and
`make submit` can check, from inside a workspace, that this deployment holds it.

Requests and answers (sources in docs/domino.md): environments are listed with GET /v1/environments (python-
domino's `environments_list`: `{"objectType": "list", "data": [...]}`), created with POST
/api/environments/beta/environments and revised with POST .../environments/{id}/revisions (python-domino's
flat bodies), and read with GET /api/environments/v1/environments/{id}, whose answer wraps the environment in
`{"environment": ...}` with `latestRevision` and `selectedRevision` (the active one). A created revision comes
back as `{"environmentRevision": {...}}`. Answers without their envelope are accepted too.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from stageflow.domino.api import CREDENTIALS, Api, DominoError, connect, configured, items, squeeze, unwrap
from stageflow.images import BUILD, PUSHED
from stageflow.registry import ROOT, STAGES, Stage
from stageflow.rundir import write_atomic

ENVIRONMENTS = BUILD / "environments.json"
# Who can use the environments (docs/domino.md): Private (yours), Organization (an organization's: Private
# with `orgOwnerId`, as Domino's public API defines it) or Global (everyone's; only Domino admins may make one).
# Environments are created Private by default and only an admin can change an existing one's visibility
# (Domino support: "Central config setting to prevent users from creating or editing environments").
VISIBILITIES = ("Private", "Organization", "Global")
TIMEOUT_ENV, POLL_ENV = "STAGEFLOW_BUILD_TIMEOUT", "STAGEFLOW_BUILD_POLL"  # seconds: how long, how often
# Build statuses, compared without case: Domino's public API lists queued, pulling, starting, building,
# pushing, succeeded, failed and killed (EnvironmentRevisionBuildStatusV1 in its generated client); a CI
# pipeline reads "Succeeded" and "Failed". Anything not known to be an outcome is taken as still building; the
# other spellings here are accepted so that a variant of an outcome never waits out the timeout.
SUCCEEDED, FAILED = {"succeeded", "success", "built"}, {"failed", "killed", "error", "cancelled", "canceled"}
# Where a failed revision may say why: the public API's field for it is not documented (docs/domino.md).
MESSAGE_KEYS = ("statusMessage", "message", "error", "errorMessage", "failureReason")


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# The two records this project writes and reads back, typed: what each holds, key by key, with nothing else
# allowed (a misspelt or hand-edited key is a mistake, not something to ignore). {str: X} is a map of names.
ENTRY = {"environment_id": str, "revision_id": str, "image": str, "version": str, "status": str, "name": str}
RECORDS = {
    "pushed.json": {"registry": str, "images": {str: str}, "versions": {str: str}},
    "environments.json": {"definitions": {str: {"name": str, "image": str, "dockerfileInstructions": str,
                                               "description": str, "supportedClusters": [str]}},
                          "applied": ({"via": str, "visibility": str, "environments": {str: ENTRY}}, None)},
}


def shape_problem(value, spec, where: str) -> str | None:
    """Where `value` departs from `spec` (a type; a tuple of alternatives; [spec], a list of such; {str: spec},
    a map of names; or {key: spec}, an object whose keys are optional and allowed no others), in words; None
    when it does not."""
    if isinstance(spec, tuple):
        problems = [shape_problem(value, alternative, where) for alternative in spec]
        return None if None in problems else problems[0]
    if spec is None:
        return None if value is None else f"{where}: expected null"
    if isinstance(spec, list):
        if not isinstance(value, list):
            return f"{where}: expected a list, found {type(value).__name__}"
        return next(filter(None, (shape_problem(v, spec[0], f"{where}[{i}]") for i, v in enumerate(value))), None)
    if isinstance(spec, type):
        return None if isinstance(value, spec) and not isinstance(value, bool) else \
            f"{where}: expected {spec.__name__}, found {type(value).__name__}"
    if not isinstance(value, dict):
        return f"{where}: expected an object, found {type(value).__name__}"
    if list(spec) == [str]:
        return next(filter(None, (shape_problem(v, spec[str], f"{where}.{k}") for k, v in value.items())), None)
    unknown = sorted(set(value) - set(spec))
    if unknown:
        return f"{where}: unknown key {unknown[0]!r}"
    return next(filter(None, (shape_problem(value[k], spec[k], f"{where}.{k}") for k in spec if k in value)), None)


def read_record(path: Path) -> dict | None:
    """pushed.json or environments.json, checked to be what `make push` and `make environments` write; None
    when there is none. A record that is not (a hand edit, a cut-short file) is refused in one line that says
    how to make a good one."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as err:
        data, problem = None, f"not JSON ({' '.join(str(err).split())[:80]})"
    else:
        problem = shape_problem(data, RECORDS.get(path.name, object), "the record")
    if problem:
        again = "make push REGISTRY=host:port/prefix" if path.name == "pushed.json" else "make environments"
        raise DominoError(f"{shown(path)}: {problem}; it was not written by `{again}` as it is: run that again")
    return data


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


RUNTIME_DOCKERFILES = ("stages/libraries.Dockerfile", "stages/Dockerfile")  # what every stage image starts FROM


def runtime_settings() -> tuple[str, str]:
    """The stage images' job user (ARG UID) and their ENV instructions, read from the final stages of the
    Dockerfiles every stage image starts FROM (the libraries image, then the runtime image): the one place they
    are written, and part of every image version."""
    uid, env = None, []
    for name in RUNTIME_DOCKERFILES:
        text = (ROOT / name).read_text().replace("\\\n", " ")
        final = text[text.rindex("\nFROM "):]  # the image's own stage, not the wheel-installing ones
        found = re.search(r"^ARG UID=(\d+)", final, re.M)
        uid = found[1] if found else uid
        env += re.findall(r"^ENV (.+)$", final, re.M)
    if not (uid and env):
        raise DominoError(f"{' and '.join(RUNTIME_DOCKERFILES)}: no `ARG UID=` or `ENV` in their final stages, which "
                          f"the environments restate")
    return uid, " ".join(" ".join(line.split()) for line in env)


def dockerfile_instructions(stage: Stage) -> str:
    """What Domino builds on top of the stage image. Domino composes a revision from the base image, its own
    base dependencies (addBaseDependencies) and these instructions, which run as whichever user came last:
    public recipes on Domino's images (which end as its user ubuntu) therefore begin with `USER root`, and so
    do these, ending as the image does, as Domino's job user (uid 12574), which jobs run as. Restating the
    image's ENV keeps what Domino's layers add (another Python, say) from coming ahead of the stage's own
    interpreter and libraries (/opt/stage holds a stage's own, e.g. train's scikit-learn). Sources: docs/domino.md."""
    uid, env = runtime_settings()
    return (f"# stageflow stage {stage.name}, image version {stage.version}: code and libraries are in the image\n"
            f"USER root\n"
            f"ENV {env}\n"
            f"LABEL io.stageflow.stage={stage.name} io.stageflow.version={stage.version}\n"
            f"USER {uid}:{uid}\n")


def definitions(pushed: dict) -> dict[str, dict]:
    """Per stage: the environment's name, base image (by digest), Dockerfile instructions and description; a
    cluster stage's environment also runs its on-demand Dask cluster (stageflow/domino/clusters.py), so it lists
    Dask among its supported clusters."""
    return {name: {"name": stage.environment, "image": pushed["images"][name],
                   "dockerfileInstructions": dockerfile_instructions(stage),
                   "description": f"stageflow {name}: {stage.description} (image version {stage.version})",
                   **({"supportedClusters": ["Dask"]} if stage.cluster else {})}
            for name, stage in STAGES.items()}


def state(revision: dict) -> str:
    """built, failed or building, from a revision as Domino shows it (or as the record keeps it)."""
    status = str(revision.get("status") or "").lower()
    if status in SUCCEEDED or revision.get("isBuilt") is True:  # isBuilt: the internal revision DTO's flag
        return "built"
    return "failed" if status in FAILED else "building"


def applied_environments(record: dict | None) -> dict[str, dict]:
    return ((record or {}).get("applied") or {}).get("environments") or {}


def recorded(entry: dict, image: str | None) -> bool:
    """Whether a record entry names an environment and a revision made from `image`."""
    return bool(entry.get("environment_id") and entry.get("revision_id")) and entry.get("image") == image


def record_problems(record: dict | None, pushed: dict | None) -> list[str]:
    """Why build/environments.json does not name a built revision of the last push for every stage (empty
    when it does). What the deployment holds is checked apart, through its API (`domino_problems`)."""
    create = f"run `make environments` with {CREDENTIALS} set"
    if record is None:
        return [f"no environment definitions ({shown(ENVIRONMENTS)} missing): {create}"]
    defined = record.get("definitions") or {}
    if pushed is not None and not push_problems(pushed) and defined != definitions(pushed):
        return [f"{shown(ENVIRONMENTS)} does not match the last push: {create}"]
    done = applied_environments(record)
    behind = [name for name in STAGES if not recorded(done.get(name, {}), (defined.get(name) or {}).get("image"))]
    if behind:
        return [f"no Domino environment revision recorded for the last push ({', '.join(behind)}): {create}"]
    unbuilt = [f"{name} ({done[name].get('status')})" for name in STAGES if state(done[name]) != "built"]
    if unbuilt:
        return [f"environment revisions not built: {', '.join(unbuilt)}: run `make environments` again (it waits "
                f"for the builds and says why one failed)"]
    return []


def built_revisions(path: Path | None = None, key: str = "revision_id") -> dict[str, str]:
    """Per stage, the id of the revision `make environments` saw built from the image of the current code;
    flow.py pins these (and, with key="environment_id", names the environments of the cluster stages' tasks by
    id). Empty without a record (locally, before the first `make environments`)."""
    done = applied_environments(read_record(path or ENVIRONMENTS))
    return {name: entry[key] for name, entry in done.items()
            if name in STAGES and entry.get("revision_id") and entry.get(key) and entry.get("version") ==
            STAGES[name].version and state(entry) == "built"}


# ---------------------------------------------------------------- Domino's answers


def environment(api: Api, environment_id: str) -> dict | None:
    """The environment with this id on the deployment behind `api`, or None when it has none."""
    try:
        return unwrap(api.get(f"/api/environments/v1/environments/{environment_id}"), "environment")
    except DominoError as err:
        if err.status == 404:
            return None
        raise


def revision(found: dict | None, revision_id: str) -> dict | None:
    """The revision with this id as the environment shows it: its latest or its active one (an older one is
    not visible through the public API). The active revision is `selectedRevision` in the public API,
    `activeRevision` in older descriptions; being active means it was built."""
    for key in ("latestRevision", "selectedRevision", "activeRevision"):
        shown_revision = (found or {}).get(key)
        if isinstance(shown_revision, dict) and shown_revision.get("id") == revision_id:
            if key != "latestRevision" and not shown_revision.get("status"):
                return {**shown_revision, "status": "Succeeded"}
            return shown_revision
    return None


def revision_image(found: dict) -> str | None:
    """The base image of a revision, when the answer echoes the request's `image` (not a documented field;
    `dockerImage`, seen in examples, may well name the image Domino built, so it is not compared)."""
    return found.get("image")


def message(found: dict) -> str:
    said = "; ".join(str(found[key]) for key in MESSAGE_KEYS if found.get(key))
    return f": {squeeze(said)}" if said else ""


def revision_problem(stage: str, entry: dict, name: str, found_env: dict | None) -> str | None:
    """What is wrong with the recorded revision on this deployment, or None when it is built from the image."""
    environment_id, revision_id = entry.get("environment_id"), entry.get("revision_id")
    if found_env is None:
        return (f"stage {stage}: this deployment has no environment {environment_id} ({name}): run `make "
                f"environments` against this deployment and commit {shown(ENVIRONMENTS)}")
    found = revision(found_env, revision_id)
    if found is None:
        return (f"stage {stage}: revision {revision_id} is no longer the latest or active revision of {name}: "
                f"run `make environments` to build one from the pushed image again")
    if state(found) == "failed":
        return (f"stage {stage}: revision {revision_id} of {name} failed to build ({found.get('status')}"
                f"{message(found)}): see its build log in Domino, then run `make environments` again")
    if state(found) == "building":
        return f"stage {stage}: revision {revision_id} of {name} is {found.get('status')}: run `make environments`, which waits for it"
    image = revision_image(found)
    if image and image != entry.get("image"):
        return f"stage {stage}: revision {revision_id} of {name} holds {image}, not the pushed {entry.get('image')}: run `make environments`"
    return None


def domino_problems(api: Api, record: dict) -> list[str]:
    """Whether the deployment behind `api` holds every recorded environment, visible to this user, with its
    recorded revision built from the pushed image: a deployment is known by what it holds, not by how its URL
    is spelt. Environments missing or hidden for several stages make one line each."""
    done, defined = applied_environments(record), record.get("definitions") or {}
    missing, hidden, found = [], [], []
    for stage in STAGES:
        entry, name = done.get(stage, {}), (defined.get(stage) or {}).get("name")
        try:
            found_env = environment(api, entry.get("environment_id"))
        except DominoError as err:
            if err.status != 403:  # Domino refuses to show an environment that is not the user's to use
                raise
            hidden.append((stage, name))
            continue
        if found_env is None:
            missing.append((stage, f"{entry.get('environment_id')} ({name})"))
        elif found_env.get("archived"):
            found.append(f"stage {stage}: environment {name} is archived on this deployment: run `make environments` "
                         f"to make a new one and commit {shown(ENVIRONMENTS)}")
        else:
            problem = revision_problem(stage, entry, name, found_env)
            found += [problem] if problem else []
    redo = f"run `make environments` against this deployment and commit {shown(ENVIRONMENTS)}"
    if len(missing) == len(STAGES):
        found.insert(0, f"none of the environments in {shown(ENVIRONMENTS)} is on this deployment (they were made on "
                        f"another): {redo}")
    elif missing:
        stages = ", ".join(stage for stage, _ in missing)
        found.insert(0, f"stage{'s' * (len(missing) > 1)} {stages}: this deployment has no environment "
                        f"{', '.join(what for _, what in missing)}: {redo}")
    if hidden:
        made = ((record.get("applied") or {}).get("visibility")) or "Private"
        found.insert(0, f"stage{'s' * (len(hidden) > 1)} {', '.join(stage for stage, _ in hidden)}: environment"
                        f"{'s' * (len(hidden) > 1)} {', '.join(name for _, name in hidden)} exist on this deployment "
                        f"but are not visible to you (made {made}): ask a Domino admin to make them Organization or "
                        f"Global (only admins change an environment's visibility), or make your own with `make "
                        f"environments VISIBILITY=Organization ORGANIZATION=<org>` and commit {shown(ENVIRONMENTS)}")
    return found


# ---------------------------------------------------------------- creating, revising, waiting


def revision_body(definition: dict) -> dict:
    return {"dockerfileInstructions": definition["dockerfileInstructions"], "environmentVariables": [],
            "image": definition["image"], "postRunScript": "", "postSetupScript": "", "preRunScript": "",
            "preSetupScript": "", "skipCache": False, "summary": definition["description"],
            "supportedClusters": definition.get("supportedClusters", []), "tags": [], "useVpn": False,
            "workspaceTools": []}


@dataclass(frozen=True)
class Visibility:
    """The visibility asked for, and the organization's id for Organization."""
    name: str = "Private"
    organization: str | None = None  # its name, as the user gave it
    organization_id: str | None = None

    def body(self) -> dict:
        """python-domino's spelling (Private, Global); an organization's environment is Private with an owner."""
        return {"visibility": "Global" if self.name == "Global" else "Private",
                **({"orgOwnerId": self.organization_id} if self.organization_id else {})}

    def shown(self) -> str:
        return f"Organization ({self.organization})" if self.name == "Organization" else self.name

    def matches(self, found: dict) -> bool:
        """Whether an environment as the API shows it (visibility private, organization or global) is this."""
        return str(found.get("visibility") or "").lower() in ("", self.name.lower())


def visibility(api: Api | None, name: str, organization: str | None) -> Visibility:
    """The visibility asked for, checked; Organization needs an organization the user belongs to, found by name
    (or id) among the user's organizations."""
    wanted = next((v for v in VISIBILITIES if v.lower() == (name or "").lower()), None)
    if wanted is None:
        raise DominoError(f"VISIBILITY={name}: expected one of {', '.join(VISIBILITIES)}")
    if wanted != "Organization":
        if organization:
            raise DominoError(f"ORGANIZATION={organization} is only for VISIBILITY=Organization")
        return Visibility(wanted)
    if not organization:
        raise DominoError("VISIBILITY=Organization needs the organization: ORGANIZATION=<name>")
    if api is None:
        return Visibility(wanted, organization)
    orgs = [o for o in items(api.get("/api/organizations/v1/organizations"), "orgs", "organizations")
            if isinstance(o, dict)]
    chosen = next((o for o in orgs if organization in (o.get("name"), o.get("id"))), None)
    if chosen is None:
        yours = ", ".join(str(o.get("name")) for o in orgs) or "none"
        raise DominoError(f"ORGANIZATION={organization}: you are not a member of an organization of that name on "
                          f"{api.via} (yours: {yours})")
    return Visibility(wanted, str(chosen.get("name")), str(chosen.get("id")))


def refused(err: DominoError, wanted: Visibility, creating: bool) -> DominoError:
    """A 403 on creating or revising an environment, as what it means and who can do it."""
    if err.status != 403:
        return err
    if creating and wanted.name == "Global":
        return DominoError(f"Domino refused to create it Global: only Domino admins make Global environments; use "
                           f"VISIBILITY=Organization ORGANIZATION=<name>, or ask an admin ({err})")
    what = "create it" if creating else "add a revision to it"
    return DominoError(f"Domino refused to let you {what}: on this deployment only Domino admins "
                       f"may create or edit environments (the admin setting com.cerebro.domino.environments."
                       f"canNonSysAdminsCreateEnvironments), or it is not yours; ask a Domino admin to run `make "
                       f"environments` or to allow it ({err})")


def create(api: Api, definition: dict, wanted: Visibility) -> tuple[str, str]:
    """A new environment (addBaseDependencies: Domino adds what its jobs need to an image not its own);
    returns its id and the id of its first revision, which the answer may not carry: then it is read back."""
    try:
        answer = api.post("/api/environments/beta/environments", {
            **revision_body(definition), "name": definition["name"], **wanted.body(),
            "addBaseDependencies": True, "description": definition["description"], "isRestricted": False})
    except DominoError as err:
        raise refused(err, wanted, creating=True) from None
    created = unwrap(answer, "environment")
    environment_id = required(created.get("id"), "environment id", definition["name"])
    first = (created.get("latestRevision") or {}).get("id") or \
        ((environment(api, environment_id) or {}).get("latestRevision") or {}).get("id")
    return environment_id, required(first, "revision id", definition["name"])


def revise(api: Api, environment_id: str, definition: dict, wanted: Visibility) -> str:
    try:
        answer = api.post(f"/api/environments/beta/environments/{environment_id}/revisions", revision_body(definition))
    except DominoError as err:
        raise refused(err, wanted, creating=False) from None
    added = unwrap(answer, "environmentRevision")
    return required(added.get("id"), "revision id", definition["name"])


def required(value, what: str, name: str) -> str:
    if not value:
        raise DominoError(f"Domino's answer for {name} carries no {what}; nothing recorded for it")
    return str(value)


def by_name(api: Api) -> dict[str, list[dict]]:
    named: dict[str, list[dict]] = {}
    for found in items(api.get("/v1/environments"), "data", "environments"):
        named.setdefault(found.get("name"), []).append(found)
    return named


def apply(defined: dict[str, dict], api: Api, before: dict, say: Callable[[str], None],
          timeout: float, interval: float, wanted: Visibility = Visibility()) -> None:
    """Create or revise each stage's environment, then wait for its revision to build. A stage whose
    recorded revision of the same image is built (or still building) sends nothing new. The record is
    written after every change, so a re-run after a refused request, a failed build or a timeout neither
    adds the same revision twice nor loses one."""
    named = by_name(api)
    done = dict(before.get("environments") or {})
    applied = {"via": api.via, "visibility": wanted.shown(),  # for the reader: the deployment is known by its ids
               "environments": done}
    waiting = []
    for stage, definition in defined.items():
        name, matches, last = definition["name"], named.get(definition["name"], []), done.get(stage) or {}
        if len(matches) > 1:
            raise DominoError(f"{len(matches)} environments on {api.via} are named {name}; archive all but one")
        if matches and not wanted.matches(matches[0]):
            say(f"{stage:8} {name:20} warning: it exists as {matches[0].get('visibility')}, not {wanted.shown()}: a "
                f"revision keeps that; only a Domino admin can change an environment's visibility")
        if matches and last.get("environment_id") == matches[0].get("id") and last.get("image") == definition["image"]:
            found = revision(environment(api, last["environment_id"]), last.get("revision_id"))
            if found and state(found) == "built":
                last["status"] = "Succeeded"
                say(f"{stage:8} {name:20} up to date: environment {last['environment_id']}, revision {last['revision_id']}")
                continue
            if found and state(found) == "building":
                waiting.append(stage)  # sent by an earlier run that stopped waiting
                continue
        try:
            if matches:
                environment_id, action = matches[0]["id"], "revision added"
                revision_id = revise(api, environment_id, definition, wanted)
            else:
                (environment_id, revision_id), action = create(api, definition, wanted), f"created {wanted.shown()}"
        except DominoError as err:
            raise DominoError(f"stage {stage}, environment {name}: {err}") from None
        done[stage] = {"environment_id": environment_id, "revision_id": revision_id, "image": definition["image"],
                       "version": STAGES[stage].version, "status": "sent"}
        write(defined, applied)
        say(f"{stage:8} {name:20} {action}: environment {environment_id}, revision {revision_id}")
        waiting.append(stage)
    write(defined, applied)
    wait(defined, api, applied, waiting, say, timeout, interval)


def wait(defined: dict[str, dict], api: Api, applied: dict, waiting: list[str], say: Callable[[str], None],
         timeout: float, interval: float) -> None:
    """Poll each revision until it is built or failed, saying each change of status; every failure is
    reported at the end, with what Domino says, and a timeout names the revisions still building."""
    done, started, seen, failed = applied["environments"], time.monotonic(), {}, []
    while waiting:
        for stage in list(waiting):
            entry, name = done[stage], defined[stage]["name"]
            found_env = environment(api, entry["environment_id"])
            found = revision(found_env, entry["revision_id"])
            if found is None:
                raise DominoError(revision_problem(stage, entry, name, found_env))
            if found.get("status") != seen.get(stage):
                seen[stage] = found.get("status")
                say(f"{stage:8} {name:20} revision {found.get('number', entry['revision_id'])}: {seen[stage]} "
                    f"({time.monotonic() - started:.0f} s)")
            if state(found) == "building":
                continue
            entry["status"] = "Succeeded" if state(found) == "built" else found.get("status")
            write(defined, applied)
            waiting.remove(stage)
            problem = revision_problem(stage, entry, name, found_env)
            failed += [problem] if problem else []
        if waiting and time.monotonic() - started > timeout:
            still = ", ".join(f"{stage} ({seen.get(stage)})" for stage in waiting)
            raise DominoError(f"revisions still building after {timeout:.0f} s: {still}; run `make environments` "
                              f"again to keep waiting (no new revision is added), or set {TIMEOUT_ENV}")
        if waiting:
            time.sleep(interval)
    if failed:
        raise DominoError("\n".join(failed))


def write(defined: dict[str, dict], applied: dict | None) -> None:
    BUILD.mkdir(exist_ok=True)  # written beside and renamed: a killed run never leaves half a record
    write_atomic(ENVIRONMENTS, json.dumps({"definitions": defined, "applied": applied}, indent=2) + "\n")


def seconds(env, name: str, default: float) -> float:
    try:
        return float(env.get(name) or default)
    except ValueError:
        raise DominoError(f"{name}={env.get(name)}: expected a number of seconds") from None


def run(env=os.environ, say: Callable[[str], None] = print, visibility_name: str = "Private",
        organization: str | None = None) -> None:
    """`make environments`: write the definitions; where Domino's API is reachable, create or revise them
    with the visibility asked for and wait for each revision's build."""
    pushed = read_record(PUSHED)
    problems = push_problems(pushed)
    if problems:
        raise DominoError(problems[0])
    visibility(None, visibility_name, organization)  # a wrong VISIBILITY stops before anything is written
    timeout, interval = seconds(env, TIMEOUT_ENV, 1800), seconds(env, POLL_ENV, 10)
    defined = definitions(pushed)
    before = (read_record(ENVIRONMENTS) or {}).get("applied") or {}
    write(defined, before or None)
    for stage, definition in defined.items():
        say(f"{stage:8} {definition['name']:20} {definition['image']}")
    if not configured(env):
        say(f"written to {shown(ENVIRONMENTS)}; nothing was sent to Domino: set {CREDENTIALS} to create them")
        return
    api = connect(env)
    apply(defined, api, before, say, timeout, interval, visibility(api, visibility_name, organization))
    say(f"written to {shown(ENVIRONMENTS)}: every stage's environment and the revision built from this push, "
        f"on {api.via}; commit it")
