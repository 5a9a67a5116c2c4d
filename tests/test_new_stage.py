"""docs/new-stage.md, followed to the letter in a copy of the repository: the stage it adds runs in the flow."""

import json
import shlex
import subprocess

import pytest

from stageflow.runtime import schema as schemas

from conftest import ROOT, as_typed, fenced

GUIDE = ROOT / "docs" / "new-stage.md"


def insert(path, text, *, after=None, before=None):
    """`text` put in `path` after the line starting with `after`, or before the one starting with `before`."""
    lines = path.read_text().splitlines(keepends=True)
    anchor = after or before
    at = next(i for i, line in enumerate(lines) if line.startswith(anchor))
    lines.insert(at + 1 if after else at, text)
    path.write_text("".join(lines))


@pytest.mark.slow
def test_the_guide_adds_a_stage_that_runs_in_the_flow(tmp_path):
    ours = (ROOT / "docker-compose.yml").read_bytes()
    checkout = tmp_path / "repo"
    checkout.mkdir()
    subprocess.run(f"git ls-files -z | xargs -0 cp --parents -t {checkout}", shell=True, cwd=ROOT, check=True)
    main_py, registry_entry, flow_call = fenced(GUIDE, "python")
    dockerfile, = fenced(GUIDE, "dockerfile")
    (checkout / "stages" / "profile").mkdir()
    (checkout / "stages" / "profile" / "main.py").write_text(main_py)
    (checkout / "stages" / "profile" / "Dockerfile").write_text(dockerfile)
    insert(checkout / "stageflow" / "registry.py", registry_entry, after='    Stage("train"')
    insert(checkout / "flow.py", flow_call, before="    return TrainingOutputs(")

    # The copy's package, not the one installed (editable) from this checkout: PYTHONPATH comes first.
    env = {"PYTHONPATH": str(checkout)}
    commands, = fenced(GUIDE, "sh")
    for line in commands.splitlines():
        proc = as_typed(shlex.split(line), checkout, env)
        assert proc.returncode == 0, f"{line}\n{proc.stdout}\n{proc.stderr}"

    assert "  profile:\n" in (checkout / "docker-compose.yml").read_text()
    run = json.loads((checkout / "runs" / "latest" / "run.json").read_text())
    assert run["stages"]["profile"]["status"] == "succeeded"
    profile = json.loads((checkout / "runs" / "latest" / "profile" / "outputs" / "profile").read_text())
    schema = schemas.active()
    assert profile["rows"] == run["stages"]["process"]["rows_out"] == sum(profile["classes"].values())
    assert set(profile["classes"]) == set(schema.classes or profile["classes"])
    assert list(profile["means"]) == list(schema.features)
    assert (ROOT / "docker-compose.yml").read_bytes() == ours  # the guide's commands changed the copy only
