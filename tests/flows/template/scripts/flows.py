"""Helpers the template's scripts import from beside them (as Domino's template scripts do): a flow job reads
/workflow/inputs and writes /workflow/outputs; run by hand, the script takes arguments instead."""

import os


def in_flow() -> bool:
    return os.environ.get("DOMINO_IS_WORKFLOW_JOB") == "true"


def read_input(name: str, fallback: str | None = None, is_file: bool = False) -> str:
    if not in_flow():
        return fallback
    path = f"/workflow/inputs/{name}"
    if is_file:
        return path
    with open(path) as handle:
        return handle.read()


def output(name: str, fallback: str = ".") -> str:
    return f"/workflow/outputs/{name}" if in_flow() else os.path.join(fallback, name)
