"""`stageflow draft-schema`: a first schema.toml drafted from one source file, for the user to edit.

The file is read by the loads' own readers (stageflow.runtime.sources), and each column's type is one the load
takes for every value the file holds (dataset.column_as: the load's own conversions), so the draft fits the
file it came from, but for columns no type takes, which it names in a comment. Which column is the key and
which the label it cannot know: it guesses from the names and the values, and says so beside each guess.
"""

from __future__ import annotations

import os
import re
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from stageflow.rundir import write_atomic
from stageflow.runtime import dataset, inputs, sources
from stageflow.runtime.contract import StageError

# Words of a column's name (dataset.name_words) that make it the likely key, or the likely label.
KEY_WORDS = {"id", "key", "index", "sample", "row", "uid", "uuid", "identifier", "code", "no"}
LABEL_WORDS = {"label", "target", "class", "species", "outcome", "y", "diagnosis", "category", "cultivar",
               "variety", "grade", "response", "result", "kind", "type"}
MAX_CLASSES = 50  # more distinct values than this: a measurement or a name, more likely than a class
KINDS = ("int", "float", "text", "label")


class DraftError(StageError):
    """A source no schema can be drafted from: one line saying why."""


@dataclass
class Column:
    """What one column of the source holds, gathered batch by batch."""

    name: str
    holds: str  # the type the file gives it, for a comment
    fits: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(KINDS, True))
    missing: int = 0
    low: float | None = None
    high: float | None = None
    keys: list[pa.ChunkedArray] | None = field(default_factory=list)  # its values, while it may be the key
    labels: Counter | None = field(default_factory=Counter)  # label -> rows, while it may be the label

    def add(self, values: pa.ChunkedArray) -> None:
        seen = {}
        for kind in KINDS:  # text and label last: a column of fractions is a feature, neither key nor label
            if not self.fits[kind] or (kind in ("text", "label") and self.measured) or \
                    (kind == "label" and self.labels is None):
                continue
            converted = seen[kind] = dataset.column_as(values, kind, feature=kind in ("int", "float"))
            self.fits[kind] = converted is not None
            if kind == "float" and converted is not None:
                bounds = pc.min_max(converted)  # NaN left out
                low, high = bounds["min"].as_py(), bounds["max"].as_py()
                if low is not None:
                    self.low = low if self.low is None else min(self.low, low)
                    self.high = high if self.high is None else max(self.high, high)
            if kind == "label":
                if converted is None:
                    self.labels = None
                    continue
                for entry in pc.value_counts(converted).to_pylist():
                    if entry["values"] is not None:
                        self.labels[entry["values"]] += entry["counts"]
                if len(self.labels) > MAX_CLASSES:
                    self.labels = None
        # missing as the load counts it: a blank field too, which a CSV reader gives as text
        self.missing += next((seen[k] for k in ("float", "text") if seen.get(k) is not None), values).null_count
        if self.keys is not None:
            if self.missing or not (self.fits["int"] or self.fits["text"]) or self.measured:
                self.keys = None
            else:
                self.keys.extend(values.chunks)

    @property
    def measured(self) -> bool:
        """Numbers with fractions: a feature, never a key or a class."""
        return self.fits["float"] and not self.fits["int"]

    @property
    def words(self) -> set[str]:
        return set(dataset.name_words(self.name))

    def unique(self, rows: int) -> bool:
        """Never missing, and another value in every row (as the load compares them: `01` is `1` for integers)."""
        if not self.keys:
            return False
        values = dataset.column_as(pa.chunked_array(self.keys), self.key_type)
        return values is not None and values.null_count == 0 and pc.count_distinct(values).as_py() == rows

    @property
    def key_type(self) -> str:
        return "int" if self.fits["int"] else "text"

    @property
    def feature_type(self) -> str | None:
        return "int" if self.fits["int"] else "float" if self.fits["float"] else None

    def range_note(self, rows: int) -> str:
        if self.low is None:
            note = "no value"
        elif self.low == self.high:
            note = f"{self.low:g} in every row"
        else:
            note = f"{self.low:g} to {self.high:g}"
        return note + (f", {self.missing} missing" if self.missing and self.low is not None else "")


def read(path: Path) -> tuple[list[Column], int, str]:
    """Each column of the source, its row count and its format, through the loads' readers."""
    name = f"input data_path: {path}"
    try:
        fmt = inputs.source_format(inputs.data_path(str(path)))  # the loads' own rule for a data path
        columns: list[Column] = []
        rows = 0
        for table in sources.source_tables(path, fmt, typed=None):
            names = dataset.column_names(table, name)
            if not columns:
                repeated = sorted({col for col in names if names.count(col) > 1})
                if repeated:
                    raise DraftError(f"{path}: column {dataset.listed(repeated)} appears more than once; rename one")
                if any(_fraction(col) for col in names):
                    raise DraftError(f"{path}: the first line ({dataset.listed(names)}) looks like data, not a "
                                     f"header naming the columns; add a header row")
                columns = [Column(col, str(table.schema.field(i).type)) for i, col in enumerate(names)]
            for i, column in enumerate(columns):
                column.add(table.column(i))
            rows += table.num_rows
    except DraftError:
        raise
    except StageError as err:
        raise DraftError(str(err).removeprefix("input data_path: ")) from None
    if not rows:
        raise DraftError(f"{path} has no data rows to draft a schema from")
    return columns, rows, fmt


def _fraction(text: str) -> bool:
    """A number other than a whole one (`5.1`, `1e3`): what a header row never holds and a data row often does."""
    return sources.is_number(text) and not text.strip().lstrip("+-").isdigit()


def guess_key(columns: list[Column], rows: int, path: Path) -> tuple[Column, str]:
    """The column most likely to be the key: unique and never missing, an id by its name if one is, else
    integers before text, the first in the file. Why, in words."""
    unique = [c for c in columns if c.unique(rows)]
    if not unique:
        raise DraftError(f"{path}: no column holds a different value in every row, so none can be the key merge "
                         f"matches rows on; add one (a row number will do) and draft again")
    chosen = min(unique, key=lambda c: (not (c.words & KEY_WORDS), c.key_type != "int"))
    why = f"{'its name says so and ' if chosen.words & KEY_WORDS else ''}every row holds another value"
    return chosen, why


def guess_label(columns: list[Column], key: Column, path: Path) -> tuple[Column, str]:
    """The column most likely to be the label: 2 to MAX_CLASSES distinct values of text or integers, named
    like a label if one is, else text before integers, the last in the file."""
    found = [c for c in columns if c is not key and c.labels is not None and len(c.labels) >= 2 and not c.measured]
    if not found:
        raise DraftError(f"{path}: no column besides the key holds 2 to {MAX_CLASSES} distinct values of text or "
                         f"integers, as a label column does")
    named = [c for c in found if c.words & LABEL_WORDS]
    chosen = named[-1] if named else max(found, key=lambda c: (c.feature_type is None, columns.index(c)))
    why = f"{'its name says so and ' if named else ''}it holds {len(chosen.labels)} distinct values"
    return chosen, why


def _printable(text: str) -> str:
    """`text` for a comment line: a character TOML refuses there (a control character, a line break) as `?`."""
    return "".join(c if c.isprintable() else "?" for c in text)


def toml_string(text: str) -> str:
    """`text` as a TOML basic string: quotes and backslashes escaped, control characters as \\uXXXX."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\u{ord(m.group()):04x}", escaped) + '"'


def toml_key(name: str) -> str:
    """A column name as a TOML key: bare when TOML allows it, else quoted (a space, a dot, a bracket...)."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else toml_string(name)


def lines(pairs: list[tuple[str, str]], notes: list[str]) -> list[str]:
    """`key = value` lines, each with its note as a comment, the comments aligned."""
    width = max((len(f"{key} = {value}") for key, value in pairs), default=0)
    return [f"{key} = {value}".ljust(width) + f"  # {note}" if note else f"{key} = {value}"
            for (key, value), note in zip(pairs, notes)]


def draft(path: Path, out: Path | None) -> tuple[str, str]:
    """The drafted schema's text, and a line saying what it guessed."""
    columns, rows, fmt = read(path)
    key, key_why = guess_key(columns, rows, path)
    label, label_why = guess_label(columns, key, path)
    rest = [c for c in columns if c is not key and c is not label]
    features = [c for c in rest if c.feature_type and c.missing < rows]
    if not features:
        raise DraftError(f"{path}: no column besides the key and the label holds a number in every row, and the "
                         f"model learns from numbers; convert one, or check that the file is the table you meant")
    dropped = [c for c in rest if c not in features and c.fits["text"]]
    unusable = [c for c in rest if c not in features and c not in dropped]
    beside = str(path) if path.is_absolute() else os.path.relpath(path.absolute(), (out or Path("x")).absolute().parent)
    where = _printable(shlex.quote(str(path)))
    classes = sorted(label.labels)
    spellings = {" ".join(text.split()).lower() for text in classes}
    text = [f"# Drafted by `stageflow draft-schema` from {where} ({rows} rows, {len(columns)} columns, {fmt}).",
            "# Every type below is one the load takes for every value of that file; the key and the label are",
            "# guesses. Check each line (docs/own-data.md says what each key means), keep in [features] only what",
            "# the model should learn from, then try the schema on your files:",
            f"#   stageflow check-schema --schema {_printable(shlex.quote(str(out or 'schema.toml')))} {where}",
            "",
            f"[key]  # a guess: {key_why}",
            *lines([("column", toml_string(key.name)), ("type", toml_string(key.key_type))], ["", ""]),
            "",
            "[features]  # the other columns holding numbers, in the file's order (the model takes them in it)",
            *lines([(toml_key(c.name), toml_string(c.feature_type)) for c in features],
                   [c.range_note(rows) for c in features]),
            "",
            f"[label]  # a guess: {label_why}",
            *lines([("column", toml_string(label.name))], [""])]
    if len(spellings) < len(classes):
        text += lines([("match", '"ignore-case"')], ["some labels differ only in case or spaces"])
    shown = ", ".join(toml_string(c) for c in classes)
    text.append(f"# classes = [{shown}]  # the labels in this file; declared, any other label is refused")
    if dropped or unusable:
        text += ["", "[dropped]  # columns the model does not take; process drops them"]
        text += lines([(toml_key(c.name), '"text"') for c in dropped],
                      ["no value in any row" if c.missing == rows else "" for c in dropped])
        text += [f"# {_printable(c.name)}: holds {c.holds} values, which no column type takes (float, int, text): "
                 f"remove it from the file or save it as text" for c in unusable]
    text += ["", "# [samples]  # the sources `stageflow run` reads when none is given, relative to this file",
             f"# data_path_a = {toml_string(beside)}", "# data_path_b = \"...\"", ""]
    said = (f"key {key.name} ({key.key_type}), label {label.name} ({len(classes)} classes), {len(features)} "
            f"feature{'s' * (len(features) != 1)}, {len(dropped)} dropped"
            + (f", {len(unusable)} no type takes" if unusable else ""))
    return "\n".join(text), said


def write(path: Path, out: Path | None, force: bool) -> str | None:
    """Draft the schema of `path` into `out` (None: return it); never over a file unless `force`, and never
    over the source itself."""
    if out is not None:
        if out.is_dir():
            raise DraftError(f"-o {out}: a directory; give the schema file's path")
        if out.exists() and path.exists() and os.path.samefile(out, path):
            raise DraftError(f"-o {out}: that is the source file; give another path")
        if (out.exists() or out.is_symlink()) and not force:
            raise DraftError(f"-o {out}: exists; give another path, or --force to replace it")
        if not out.parent.is_dir():
            raise DraftError(f"-o {out}: no directory {out.parent}")
    text, said = draft(path, out)
    if out is None:
        return text
    write_atomic(out, text)
    print(f"wrote {out}: {said}; the key and the label are guesses: check them, then\n"
          f"  stageflow check-schema --schema {shlex.quote(str(out))} {shlex.quote(str(path))}")
    return None
