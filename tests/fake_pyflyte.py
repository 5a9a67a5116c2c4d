"""A `pyflyte` for the Domino rehearsal (tests/test_domino_rehearsal.py): records how it was called, then loads
flow.py the way `pyflyte run` does (the file's folder first on sys.path, the module imported by its name, the
workflow compiled) and records the calls flow.py made to Domino's plugin, which is the recording stand-in
(stageflow/domino/standin) on PYTHONPATH. Nothing is sent anywhere. The record goes to $FAKE_PYFLYTE_RECORD.
"""

import dataclasses
import importlib
import json
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    run, remote, path, workflow = argv[:4]
    assert (run, remote) == ("run", "--remote"), argv
    flow = Path(path).resolve()
    sys.path.insert(0, str(flow.parent))
    module = importlib.import_module(flow.stem)
    getattr(module, workflow).compile()
    from flytekitplugins.domino import artifact, helpers

    keep = ("flyte_task_name", "command", "environment_name", "environment_revision_id", "hardware_tier_name",
            "cache", "cache_version", "use_project_defaults_for_omitted")
    calls = [{**{key: call[key] for key in keep},
              "dataset_snapshots": [dataclasses.asdict(s) for s in call["dataset_snapshots"]]
              if call["dataset_snapshots"] is not None else None} for call in helpers.CALLS]
    record = {"argv": argv, "cwd": os.getcwd(), "plugin": helpers.__file__, "calls": calls, "artifacts": artifact.FILES}
    Path(os.environ["FAKE_PYFLYTE_RECORD"]).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
