"""`python -m stageflow` and the `stageflow` console script."""

import sys


def run() -> None:
    try:
        from stageflow.cli import main
    except ModuleNotFoundError as missing:  # a Python without stageflow's host libraries: one line, what to do
        print(f"error: {sys.executable} lacks {missing.name}, which stageflow needs: use the Python of `make venv` "
              f"(.venv/bin/python) or of a Domino workspace (it has flytekit and click), or pip install "
              f"{missing.name}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C while the libraries load: nothing has started
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(main())


if __name__ == "__main__":
    run()
