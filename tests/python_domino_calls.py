"""Run by tests/test_python_domino.py with the Python of python-domino's own venv: the real client
(`dominodatalab`), constructed as a user would, makes every call this project makes to Domino against the
stand-in, and prints each answer as JSON. python-domino has no method for the public API's dataset, snapshot and
organization lists; those go through its own request manager (its authentication, its proxy rewriting).

argv: how to authenticate (key, token or proxy), the stand-in's URL for it, and a JSON object with the
environment definition to create and the dataset id to list the snapshots of.
"""

import json
import sys

from domino import Domino


def main(how: str, url: str, given: str) -> None:
    given = json.loads(given)
    project = f"{given['owner']}/{given['project']}"
    if how == "proxy":  # inside a run: DOMINO_API_HOST is the internal URL, never reached; the proxy is
        domino = Domino(project, host="http://nucleus-frontend.domino-platform:80", api_proxy=url)
    elif how == "key":
        domino = Domino(project, host=url, api_key=given["credential"])
    else:
        domino = Domino(project, host=url, auth_token=given["credential"])
    definition = given["definition"]

    def public(path: str, **params):
        return domino.request_manager.get(domino._routes.host + path, params=params).json()

    answers = {"version": domino._version, "project_id": domino.project_id,
               "environments_list": domino.environments_list()}
    answers["create_environment"] = domino.create_environment(
        name=definition["name"], visibility="Private", dockerfile_instructions=definition["dockerfileInstructions"],
        base_image=definition["image"], summary=definition["description"], description=definition["description"],
        add_base_dependencies=True, is_restricted=False, organization_owner_id=given.get("organization_id"))
    environment_id = answers["create_environment"]["environment"]["id"]
    answers["create_environment_revision"] = domino.create_environment_revision(
        environment_id, dockerfile_instructions=definition["dockerfileInstructions"], base_image=definition["image"],
        summary=definition["description"])
    answers["get_environment"] = domino.get_environment(environment_id)
    answers["hardware_tiers_list"] = domino.hardware_tiers_list()
    answers["organizations"] = public("/api/organizations/v1/organizations")
    answers["datasets"] = public("/api/datasetrw/v2/datasets", projectIdsToInclude=domino.project_id, offset=0,
                                 limit=100)
    answers["snapshots"] = public(f"/api/datasetrw/v1/datasets/{given['dataset_id']}/snapshots", offset=0, limit=100)
    print(json.dumps(answers))


if __name__ == "__main__":
    main(*sys.argv[1:])
