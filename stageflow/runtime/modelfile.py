"""The model file: the trained scikit-learn pipeline in skops's format, which loads without running code.

A pickle runs whatever code its bytes ask for while it loads, so anyone who can swap the file can run code
where it is opened. skops (scikit-learn's own safe format, and what MLflow 3 saves scikit-learn models with)
stores the objects' state and rebuilds only types it trusts: scikit-learn's estimators and NumPy arrays by
default, and the few types listed here, which this model's pipeline holds (the optimiser of the network,
kept so that the model can be trained further). A file holding anything else is refused on loading. The
train stage refuses to write a model holding a type not listed, so a change of estimator is found when it
is trained, not when a user first loads it.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

from stageflow.runtime.contract import StageError

FORMAT = "skops"
# Beyond skops's defaults: what skops.io.get_untrusted_types names for StandardScaler + MLPClassifier.
TRUSTED_TYPES = ("sklearn.neural_network._stochastic_optimizers.AdamOptimizer",)


def dumps(model: Any) -> bytes:
    """The model as skops bytes, the same for the same model, once every type in it is one `loads` trusts."""
    import skops.io

    data = canonical(skops.io.dumps(model))
    untrusted = sorted(set(skops.io.get_untrusted_types(data=data)) - set(TRUSTED_TYPES))
    if untrusted:
        raise StageError(f"output model: holds {', '.join(untrusted)}, which loading would refuse; add it to "
                         f"TRUSTED_TYPES in stageflow/runtime/modelfile.py if it is safe to rebuild")
    return data


_MEMBER = re.compile(r"([0-9]+)(\.\w+)")
EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip member can carry


def canonical(data: bytes) -> bytes:
    """A skops file rewritten so that the same model always gives the same bytes, as a pickle does: skops
    names each object by its id() in memory (in schema.json's `__id__` fields and in the names of the array
    files) and stamps every member with the time it was written. Here the ids are renumbered in the order
    schema.json lists them and every member gets one fixed time; nothing else changes (a test loads it back
    and compares predictions). The same data and settings so give the same model file on every backend, and
    the model's sha256 says whether two runs trained the same model."""
    with zipfile.ZipFile(io.BytesIO(data)) as source:
        members = {info.filename: (info, source.read(info)) for info in source.infolist()}
    ids: dict[str, int] = {}

    def renumber(node: Any) -> None:
        if isinstance(node, dict):
            if "__id__" in node:
                node["__id__"] = ids.setdefault(str(node["__id__"]), len(ids) + 1)
            file = _MEMBER.fullmatch(str(node.get("file", "")))
            if file:
                node["file"] = f"{ids.setdefault(file.group(1), len(ids) + 1)}{file.group(2)}"
            for value in node.values():
                renumber(value)
        elif isinstance(node, list):
            for value in node:
                renumber(value)

    state = json.loads(members["schema.json"][1])
    renumber(state)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for name, (info, content) in members.items():
            found = _MEMBER.fullmatch(name)
            if name == "schema.json":
                content = json.dumps(state, indent=2).encode()
            elif found:
                name = f"{ids.setdefault(found.group(1), len(ids) + 1)}{found.group(2)}"
            member = zipfile.ZipInfo(name, EPOCH)
            member.compress_type, member.external_attr = info.compress_type, 0o644 << 16
            target.writestr(member, content)
    return out.getvalue()


def save(model: Any, path: Path) -> None:
    Path(path).write_bytes(dumps(model))


def loads(data: bytes) -> Any:
    """The model from skops bytes, rebuilding no type but skops's defaults and TRUSTED_TYPES."""
    import skops.io

    try:
        return skops.io.loads(data, trusted=list(TRUSTED_TYPES))
    except Exception as err:  # noqa: BLE001 - skops says "untrusted types found" or that the file is no skops file
        raise StageError(f"not a model this flow writes: {' '.join(str(err).split())[:300]}") from None
