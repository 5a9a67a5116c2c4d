"""A `pyflyte` for the Domino rehearsals (tests/test_domino_rehearsal.py, tests/test_workspace_pythons.py):
records how it was called, then loads flow.py the way `pyflyte run --remote` does before it registers anything
(the file's folder first on sys.path, the module imported by its name, the workflow compiled and serialised
with the Python and flytekit it runs under) and records the calls flow.py made to Domino's plugin, which is the
recording stand-in (stageflow/domino/standin) on PYTHONPATH. Nothing is sent anywhere. The record goes to
$FAKE_PYFLYTE_RECORD.
"""

import dataclasses
import importlib
import json
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if argv == ["--help"]:  # what `make submit` asks first: the real CLI's module imported, as it starts
        import flytekit
        import flytekit.clis.sdk_in_container.pyflyte  # noqa: F401

        print(f"Flytekit Version: {flytekit.__version__}")
        return 0
    run, remote, path, workflow = argv[:4]
    assert (run, remote) == ("run", "--remote"), argv
    flow = Path(path).resolve()
    sys.path.insert(0, str(flow.parent))
    module = importlib.import_module(flow.stem)
    entity = getattr(module, workflow)
    entity.compile()
    import flytekit
    from flytekit.configuration import ImageConfig, SerializationSettings
    from flytekit.tools.translator import get_serializable
    from flytekitplugins.domino import artifact, helpers

    specs: dict = {}
    get_serializable(specs, SerializationSettings(image_config=ImageConfig.auto_default_image(), project="p",
                                                  domain="d", version="v1"), entity)

    keep = ("flyte_task_name", "command", "environment_name", "environment_revision_id", "hardware_tier_name",
            "cache", "cache_version", "use_project_defaults_for_omitted")
    calls = [{**{key: call[key] for key in keep},
              "dataset_snapshots": [dataclasses.asdict(s) for s in call["dataset_snapshots"]]
              if call["dataset_snapshots"] is not None else None} for call in helpers.CALLS]
    record = {"argv": argv, "cwd": os.getcwd(), "plugin": helpers.__file__, "calls": calls, "artifacts": artifact.FILES,
              "python": ".".join(map(str, sys.version_info[:3])), "flytekit": flytekit.__version__,
              "serialised": sorted(type(spec).__name__ for spec in specs.values())}
    Path(os.environ["FAKE_PYFLYTE_RECORD"]).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
