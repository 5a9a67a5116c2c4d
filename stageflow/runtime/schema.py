"""The table the flow trains on, declared in one TOML file: key, features, label rules, dropped columns.

Every stage, the CLI, the image build, the data generator, the bench and the tests read the schema from here,
so bringing other data is an edit of that one file. Which file: `STAGEFLOW_SCHEMA` (a path) when it is set,
otherwise `schema.toml` beside the package (the repository root). No image holds a schema: flow.py reads the
active one when it is compiled (locally, or by `pyflyte run --remote` at submission) and passes its text to
every stage as the input `schema`, which the stage makes the active schema (stageflow.runtime.inputs.use_schema). So an edit of the
schema changes no image, and Domino's cache, which keys on a task's inputs, still tells one schema from another. Standard library only: the host tooling reads it too, and
in a Domino workspace that means whatever Python the workspace has (3.10 in Domino's standard environments), with
none of this project's dependencies installed (see `_toml`).

A schema with a mistake is refused with one line naming the key, as a strict config model would (unknown keys
are mistakes too: a misspelt optional key would otherwise be ignored without a word).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from stageflow.runtime.contract import StageError

ENV = "STAGEFLOW_SCHEMA"
DEFAULT = Path(__file__).resolve().parent.parent.parent / "schema.toml"
KEY_TYPES = ("int", "text")
FEATURE_TYPES = ("float", "int")
DROPPED_TYPES = ("float", "int", "text")
MATCHES = ("exact", "ignore-case")
LABEL_TYPES = ("text", "int")
_INTEGER = re.compile(r"[+-]?[0-9]+")


class SchemaError(StageError):
    """A schema file that cannot be used: one line naming the file and the key."""


def _toml():
    """A TOML reader with tomllib's interface, or None. tomllib is in the standard library from 3.11 on; it
    began as tomli, which 3.10 installs often have, and which every pip since 21.2 carries as
    `pip._vendor.tomli` for reading pyproject.toml. So a Python 3.10 workspace that has nothing of this
    project installed still reads schema.toml, and no extra package is needed anywhere."""
    for name in ("tomllib", "tomli", "pip._vendor.tomli"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


@dataclass(frozen=True)
class Schema:
    path: Path | None  # the file it was read from; None for the text a stage is given
    key: str
    key_type: str
    features: dict[str, str]  # name -> type, in the order the model takes them
    label: str
    match: str = "exact"
    strip_prefixes: tuple[str, ...] = ()
    classes: tuple[str, ...] | None = None  # None: whatever labels the data holds
    label_type: str = "text"  # "int": labels are integers, and the model predicts them as integers
    dropped: dict[str, str] = field(default_factory=dict)  # allowed in sources; process drops them
    samples: dict[str, Path] = field(default_factory=dict)  # flow input -> the bundled sample source

    @property
    def shown(self) -> str:
        """Where the schema came from, for a message."""
        return str(self.path) if self.path else "the schema flow.py passed (schema.toml, or $STAGEFLOW_SCHEMA)"

    @cached_property
    def types(self) -> dict[str, str]:
        """Every column a source may have, in the order snapshots hold them, with its type."""
        return {self.key: self.key_type, **self.features, **self.dropped, self.label: "label"}

    @cached_property
    def required(self) -> tuple[str, ...]:
        return (self.key, *self.features, self.label)

    def _spelling(self, label: str) -> str:
        """The label as the match rule compares it, its prefix stripped."""
        text = " ".join(label.split()).lower() if self.match == "ignore-case" else label
        for prefix in self.strip_prefixes:
            if text.startswith(prefix):
                return text[len(prefix):]
        return text

    def canonical(self, label: str) -> str:
        """The one spelling of `label` that training sees: the declared class it matches when classes are
        declared (so `BAROLO ` is `Barolo`), else its normalised spelling; an integer label as Python writes
        the integer (` 01` is `1`)."""
        text = self._spelling(label)
        if self.label_type == "int" and _INTEGER.fullmatch(text.strip()):
            text = str(int(text))
        return self._class_of.get(text, text)

    def is_label(self, label: str) -> bool:
        """Whether a label (as `canonical` spells it) can be one: any text, or an integer for label.type int."""
        return self.label_type != "int" or bool(_INTEGER.fullmatch(label))

    @cached_property
    def _class_of(self) -> dict[str, str]:
        return {self._spelling(name): name for name in self.classes or ()}


def path() -> Path:
    """The active schema file (not read)."""
    value = os.environ.get(ENV)
    return Path(value).absolute() if value else DEFAULT


_loaded: dict[tuple, Schema] = {}
_given: list[Schema] = []  # the schema a stage was given as its input, which wins over any file


def use(schema: Schema | None) -> None:
    """Make `schema` the active one for this process (None: the file again)."""
    _given[:] = [schema] if schema else []


def active() -> Schema:
    """The schema a stage was given, else the active file's, read once per file version (a test may switch
    files, or rewrite one)."""
    if _given:
        return _given[0]
    where = path()
    try:
        info = where.stat()
    except OSError:
        origin = f"{ENV}={os.environ[ENV]}" if os.environ.get(ENV) else "the default schema"
        raise SchemaError(f"schema {where} ({origin}) does not exist; set {ENV} to the path of a schema file") from None
    version = (str(where), info.st_mtime_ns, info.st_size)
    if version not in _loaded:
        _loaded.clear()
        _loaded[version] = load(where)
    return _loaded[version]


def load(where: Path) -> Schema:
    """Read and check a schema file."""
    try:
        with open(where, "rb") as handle:
            raw = handle.read()
    except OSError as err:
        raise SchemaError(f"schema {where}: cannot be read ({err.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SchemaError(f"schema {where}: not UTF-8 text ({err}); save it as UTF-8") from None
    return parse(text, str(where), where)


def text() -> str:
    """The active schema file's text, checked: what flow.py passes to the stages."""
    found = active()
    return found.path.read_text("utf-8") if found.path else ""


def from_text(text: str, where: str) -> Schema:
    """A schema given as text (a stage's input `schema`), checked as a file is; `where` names it in errors."""
    return parse(text, where, None)


def parse(text: str, where: str, file: Path | None) -> Schema:
    toml = _toml()
    if toml is None:
        raise SchemaError(f"schema {where}: this Python ({sys.executable}, {sys.version.split()[0]}) has no TOML "
                          f"reader: use Python 3.11 or later, or `{sys.executable} -m pip install tomli`")
    try:
        data = toml.loads(text)  # loads: the one call every tomli version has
    except toml.TOMLDecodeError as err:
        raise SchemaError(f"schema {where}: not valid TOML {_toml_problem(text, err)}") from None
    return _Checker(where, file).schema(data)


BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_problem(text: str, err: Exception) -> str:
    """Where the TOML parser stopped, the line, and what usually causes it there: a column name with a space
    (or another character TOML keys do not take bare) left unquoted, above all, or a type not in quotes."""
    reason = re.sub(r"\s*\(?at line \d+, column \d+\)?", "", str(err))
    found = re.search(r"line (\d+)", str(err))
    try:
        line = text.splitlines()[int(found[1]) - 1].strip() if found else ""
    except IndexError:
        line = ""
    name, equals, value = (part.strip() for part in line.partition("="))
    if equals and name and not name.startswith(("[", '"', "'")) and not BARE_KEY.fullmatch(name.replace(".", "")):
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        hint = (f'a column name with spaces or other characters than letters, digits, _ and - must be quoted: '
                f'"{quoted}" = {value}')
    elif equals and BARE_KEY.fullmatch(value):
        hint = f'a type or a word as a value must be quoted: {name} = "{value}"'
    elif equals and value.count('"') % 2:
        hint = "a quoted value must end with a quote on its own line"
    elif line.startswith("["):
        hint = "a table header is a name in brackets on a line of its own: [features]"
    elif "overwrite" in reason or "declare" in reason:
        hint = "a name is given twice: a column has one line, a table ([name]) one header"
    else:
        hint = 'names other than letters, digits, _ and - go in double quotes, and so does every text value'
    return f"at line {found[1]} ({line[:80]!r}): {reason}; {hint}" if found else f"({reason}); {hint}"


class _Checker:
    """Turns the parsed TOML into a Schema, naming the first key that is wrong."""

    def __init__(self, where: str, file: Path | None):
        self.where, self.file = where, file

    def fail(self, key: str, problem: str) -> SchemaError:
        return SchemaError(f"schema {self.where}: {key}: {problem}")

    def table(self, data: Any, key: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
        if not isinstance(data, dict):
            raise self.fail(key, f"must be a table ([{key}]), found {_kind(data)}")
        for name in data:
            if name not in allowed:
                raise self.fail(f"{key}.{name}" if key else name,
                                f"unknown key; expected one of {', '.join(allowed)}")
        for name in required:
            if name not in data:
                raise self.fail(f"{key}.{name}" if key else name, "missing; it is required")
        return data

    def text(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"must be a non-empty string, found {_kind(value)}")
        return value

    def choice(self, value: Any, key: str, choices: tuple[str, ...]) -> str:
        if value not in choices:
            raise self.fail(key, f"must be one of {', '.join(repr(c) for c in choices)}, found {value!r}")
        return value

    def columns(self, data: Any, key: str, types: tuple[str, ...]) -> dict[str, str]:
        """A table of column name -> type."""
        if not isinstance(data, dict):
            raise self.fail(key, f"must be a table of column = type ([{key}]), found {_kind(data)}")
        for name, kind in data.items():
            if isinstance(kind, dict):  # `a.b = "float"`: TOML reads a dotted name as a table in a table
                inner = next(iter(kind), "")
                raise self.fail(f"{key}.{name}", f'a column name holding a dot must be quoted: "{name}.{inner}" = ...')
        return {name: self.choice(kind, f"{key}.{name}", types) for name, kind in data.items()}

    def labels(self, data: dict) -> tuple[str, str, tuple[str, ...], tuple[str, ...] | None, str]:
        column = self.text(data["column"], "label.column")
        match = self.choice(data.get("match", "exact"), "label.match", MATCHES)
        prefixes = data.get("strip_prefixes", [])
        if not isinstance(prefixes, list) or not all(isinstance(p, str) and p for p in prefixes):
            raise self.fail("label.strip_prefixes", f"must be a list of non-empty strings, found {prefixes!r}")
        if match == "ignore-case":  # compared with labels spelt the same way
            prefixes = [prefix.lower() for prefix in prefixes]
        classes = data.get("classes")
        if classes is not None:
            if not isinstance(classes, list) or len(classes) < 2:
                raise self.fail("label.classes", f"must list at least two classes, found {classes!r}")
            for value in classes:
                # (bool is an int to Python, but true/false are not class labels one writes by accident)
                if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
                    raise self.fail("label.classes", f"classes are strings or integers, found {value!r}")
        # Integer classes declare integer labels, unless label.type says otherwise.
        default = "int" if classes and all(isinstance(value, int) for value in classes) else "text"
        kind = self.choice(data.get("type", default), "label.type", LABEL_TYPES)
        if classes is not None:
            if kind == "int":
                for value in classes:
                    if not isinstance(value, int) and not _INTEGER.fullmatch(str(value).strip()):
                        raise self.fail("label.classes", f"label.type is \"int\", but {value!r} is not an integer")
                classes = [str(int(value)) for value in classes]
            else:
                classes = [str(value) for value in classes]
        return column, match, tuple(prefixes), None if classes is None else tuple(classes), kind

    def schema(self, data: dict) -> Schema:
        self.table(data, "", ("key", "features", "label", "dropped", "samples"), ("key", "features", "label"))
        key = self.table(data["key"], "key", ("column", "type"), ("column",))
        features = self.columns(data["features"], "features", FEATURE_TYPES)
        if not features:
            raise self.fail("features", "names no column; the model needs at least one feature")
        label = self.table(data["label"], "label", ("column", "type", "match", "strip_prefixes", "classes"),
                           ("column",))
        column, match, prefixes, classes, label_type = self.labels(label)
        samples = self.table(data.get("samples", {}), "samples", ("data_path_a", "data_path_b"))
        found = Schema(
            path=self.file, key=self.text(key["column"], "key.column"),
            key_type=self.choice(key.get("type", "int"), "key.type", KEY_TYPES), features=features,
            label=column, match=match, strip_prefixes=prefixes, classes=classes, label_type=label_type,
            dropped=self.columns(data.get("dropped", {}), "dropped", DROPPED_TYPES),
            samples={name: (self.file.parent if self.file else Path()) / self.text(value, f"samples.{name}")
                     for name, value in samples.items()})
        self.check_roles(found)
        return found

    def check_roles(self, found: Schema) -> None:
        """A column has one role, and two declared classes must not be one label once normalised."""
        roles: dict[str, str] = {}
        for name, role in ((found.key, "key.column"), *((f, f"features.{f}") for f in found.features),
                           *((d, f"dropped.{d}") for d in found.dropped), (found.label, "label.column")):
            if name in roles:
                raise self.fail(role, f"column {name!r} is already {roles[name]}; a column has one role")
            roles[name] = role
        spelt: dict[str, str] = {}
        for name in found.classes or ():
            same = spelt.setdefault(found._spelling(name), name)
            if same != name or list(found.classes).count(name) > 1:
                raise self.fail("label.classes", f"{same!r} and {name!r} are the same class under "
                                                 f"match = {found.match!r}")


def _kind(value: Any) -> str:
    """What a TOML value is, for an error: `a string 'x'`."""
    kinds = {list: "a list", str: "a string", bool: "a boolean", int: "an integer", float: "a number"}
    return f"{kinds.get(type(value), type(value).__name__)} {value!r}"
