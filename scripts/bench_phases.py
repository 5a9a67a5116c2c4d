"""Run one stage's main.py as the host backend runs it, noting when its phases begin (for `bench.py --phases`):

    python scripts/bench_phases.py TIMES.json stages/merge/main.py

Where a small run's time goes is start-up: this tells it apart from the work. It notes (time.monotonic, one
clock for every process on the machine) when this interpreter is up, when the stage first reads an input
through the contract (its imports done: what follows is its work) and the seconds spent writing its outputs:
inside the snapshot writer's calls (streaming stages write as they work) or, for an output written another way
(a model, a report), inside the output's block. The parent notes when it started the process and when it
ended. Imports the stage makes later (lazily) count as work.
"""

from __future__ import annotations

import json
import runpy
import sys
import time

UP = time.monotonic()

from stageflow.runtime import contract, dataset  # noqa: E402 - after UP: imports are part of the start-up

marks = {"up": UP, "read": None, "writing": 0.0}
depth = {"writer": 0, "calls": 0}


def noting_read(read):
    def wrapped(self, *args, **kwargs):
        if marks["read"] is None:
            marks["read"] = time.monotonic()
        return read(self, *args, **kwargs)
    return wrapped


def timed_writer(method):
    def wrapped(self, *args, **kwargs):
        started = time.monotonic()
        depth["writer"] += 1
        try:
            return method(self, *args, **kwargs)
        finally:
            depth["writer"] -= 1
            depth["calls"] += 1
            if not depth["writer"]:
                marks["writing"] += time.monotonic() - started
    return wrapped


def timed_output(output_file):
    def wrapped(self, name):
        block = output_file(self, name)

        class Timed:
            def __enter__(self):
                self.started, self.calls = time.monotonic(), depth["calls"]
                return block.__enter__()

            def __exit__(self, *exc):
                try:
                    return block.__exit__(*exc)
                finally:
                    if depth["calls"] == self.calls:  # written without the snapshot writer: the block is writing
                        marks["writing"] += time.monotonic() - self.started
        return Timed()
    return wrapped


def main() -> int:
    out, script = sys.argv[1], sys.argv[2]
    contract.StageTree.read = noting_read(contract.StageTree.read)
    contract.StageTree.output_file = timed_output(contract.StageTree.output_file)
    for name in ("write", "_close"):
        setattr(dataset.Writer, name, timed_writer(getattr(dataset.Writer, name)))
    sys.argv = [script]
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as done:
        code = done.code or 0
    with open(out, "w") as handle:
        json.dump(marks, handle)
    return code


if __name__ == "__main__":
    sys.exit(main())
