"""The rules for this project's stage inputs, each written once: a stage applies its rule when it reads the input
(`read`), and the runner applies the same rule to every value it knows before the first stage starts (a flow
input, a constant such as the schema's text), so `--epochs 0` or a missing data file is one line before any
run directory exists rather than a failure after the stages upstream of it ran.

Which inputs of which stage the runner checks is the registry's (stageflow/registry.py, `Stage.checked`). A rule
takes the value as the contract types it and returns it as the stage uses it (hidden layers as a tuple, the
schema as a Schema), or raises InputError with the problem; the caller names the input. Standard library only:
the registry, which flow.py imports in a Domino workspace, names these rules.
"""

from __future__ import annotations

import errno
import math
import os
import re
from pathlib import Path
from typing import Any, Callable

from stageflow.runtime import schema as schemas
from stageflow.runtime.contract import StageError, StageTree, not_a_regular_file, parse_value

FORMATS = {".csv": "csv", ".csv.gz": "csv.gz", ".parquet": "parquet", ".pq": "parquet",
           ".jsonl": "jsonl", ".ndjson": "jsonl"}
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 10_000_000
MAX_LAYERS = 10
MAX_UNITS = 4096  # units in one hidden layer: a 4096-wide layer already holds 16M weights against another
MAX_LEARNING_RATE = 10.0
MAX_SEED = 2 ** 32 - 1  # scikit-learn's random_state takes 0 .. 2**32 - 1


class InputError(StageError):
    """What is wrong with a value, without the input's name: the stage and the runner each say which input."""


def source_format(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return FORMATS[suffix]
    raise InputError(f"{path} has an unsupported extension; expected one of {', '.join(FORMATS)}")


def data_path(value: str) -> Path:
    """A source file: there, a regular file (after links), a supported extension, not empty. What the path is
    comes before what it is called: a directory named `a.csv` is a directory."""
    if not value.strip():
        raise InputError("empty; give the path of a source file")
    path = Path(value)
    try:
        path.stat()
    except OSError as err:
        if path.is_symlink():  # dangling, or a loop of links
            raise InputError(f"{path} is a link that cannot be followed ({err.strerror})") from None
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            raise InputError(f"{path} does not exist") from None
        raise InputError(f"{path} cannot be opened ({err.strerror})") from None
    what = not_a_regular_file(path)
    if what:
        raise InputError(f"{path} is {what}, not a regular file")
    source_format(path)
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty")
    return path


def _whole(value: int, least: int, most: int) -> int:
    if value < least:
        raise InputError(f"must be at least {least}, found {value}")
    if value > most:
        raise InputError(f"{value} is more than the limit of {most}")
    return value


def epochs(value: int) -> int:
    return _whole(value, 1, MAX_EPOCHS)


def batch_size(value: int) -> int:
    return _whole(value, 1, MAX_BATCH_SIZE)


def seed(value: int) -> int:
    return _whole(value, 0, MAX_SEED)


def early_stopping(value: int) -> int:
    """Epochs without improvement of the validation loss before training stops; 0 is off."""
    return _whole(value, 0, MAX_EPOCHS)


def learning_rate(value: float) -> float:
    if not (math.isfinite(value) and 0 < value <= MAX_LEARNING_RATE):
        raise InputError(f"must be a number above 0 and at most {MAX_LEARNING_RATE:g}, found {value!r}")
    return value


def test_fraction(value: float) -> float:
    """The share of each class's rows held out for testing: some must be left to train on."""
    if not (math.isfinite(value) and 0 < value < 1):
        raise InputError(f"must be a fraction above 0 and below 1 (0.2 holds out a fifth), found {value!r}")
    return value


_LAYERS = re.compile(r"\(?\s*([0-9]+(\s*,\s*[0-9]+)*)\s*,?\s*\)?")


def hidden_layers(value: str) -> tuple[int, ...]:
    """Units per hidden layer, as text: `16`, `32,16`, or as Python writes the tuple, `(16,)` or `(32, 16)`."""
    found = _LAYERS.fullmatch(value.strip())
    if not found:
        raise InputError(f"expected units per layer separated by commas, such as 16 or 32,16; found {value!r}")
    layers = tuple(int(part) for part in found.group(1).split(","))
    if len(layers) > MAX_LAYERS:
        raise InputError(f"{len(layers)} layers are more than the limit of {MAX_LAYERS}")
    for units in layers:
        if not 1 <= units <= MAX_UNITS:
            raise InputError(f"a layer holds 1 to {MAX_UNITS} units, found {units}")
    return layers


def layers_text(layers: tuple[int, ...]) -> str:
    """Hidden layers as Python writes the tuple: `(16,)`, `(32, 16)`."""
    return repr(tuple(layers))


def schema(value: str) -> schemas.Schema:
    """The schema's text, as flow.py captures it from schema.toml (docs/own-data.md)."""
    try:
        return schemas.from_text(value, "given as text")
    except schemas.SchemaError as err:
        raise InputError(str(err)) from None


def use_schema(tree: StageTree) -> schemas.Schema:
    """Make the stage's input `schema` the active schema, first thing in every stage. Without that input (a
    stage run by hand on the host, the bench's train) the active file stands, if there is one."""
    given = (tree.inputs / "schema").exists() or not (schemas.path().exists() or os.environ.get(schemas.ENV))
    schemas.use(read(tree, "schema") if given else None)
    return schemas.active()


# The type each input arrives as (its rule takes the value so typed): for reading it, and for `stageflow submit`,
# which checks the training settings it is given before it hands them to pyflyte.
KINDS = {"data_path": str, "epochs": int, "batch_size": int, "learning_rate": float, "hidden_layers": str,
         "seed": int, "test_fraction": float, "early_stopping": int, "schema": str}
SETTINGS = ("epochs", "batch_size", "learning_rate", "hidden_layers", "seed", "test_fraction", "early_stopping")

RULES: dict[str, Callable[[Any], Any]] = {
    "data_path": data_path, "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
    "hidden_layers": hidden_layers, "seed": seed, "test_fraction": test_fraction, "early_stopping": early_stopping,
    "schema": schema,
}


def check(name: str, value: Any) -> Any:
    """`value` by the rule of input `name`, as the stage takes it; InputError (the problem only) otherwise."""
    return RULES[name](value)


def read(tree: StageTree, name: str) -> Any:
    """Input `name` read as its type and checked by its rule; one line naming the input otherwise."""
    try:
        return check(name, tree.read(name, KINDS[name]))
    except InputError as err:
        raise StageError(f"input {name}: {err}") from None


def parsed(name: str, text: str) -> Any:
    """A value given as text (a command's option) as input `name` takes it, checked; InputError otherwise."""
    try:
        value = parse_value(text, KINDS[name])
    except ValueError as err:
        raise InputError(f"{err}, found {text!r}") from None
    return check(name, value)
