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

from pathlib import Path
from typing import Any

from stageflow.runtime.contract import StageError

FORMAT = "skops"
# Beyond skops's defaults: what skops.io.get_untrusted_types names for StandardScaler + MLPClassifier.
TRUSTED_TYPES = ("sklearn.neural_network._stochastic_optimizers.AdamOptimizer",)


def dumps(model: Any) -> bytes:
    """The model as skops bytes, once every type in it is one `loads` trusts."""
    import skops.io

    data = skops.io.dumps(model)
    untrusted = sorted(set(skops.io.get_untrusted_types(data=data)) - set(TRUSTED_TYPES))
    if untrusted:
        raise StageError(f"output model: holds {', '.join(untrusted)}, which loading would refuse; add it to "
                         f"TRUSTED_TYPES in stageflow/runtime/modelfile.py if it is safe to rebuild")
    return data


def save(model: Any, path: Path) -> None:
    Path(path).write_bytes(dumps(model))


def loads(data: bytes) -> Any:
    """The model from skops bytes, rebuilding no type but skops's defaults and TRUSTED_TYPES."""
    import skops.io

    try:
        return skops.io.loads(data, trusted=list(TRUSTED_TYPES))
    except Exception as err:  # noqa: BLE001 - skops says "untrusted types found" or that the file is no skops file
        raise StageError(f"not a model this flow writes: {' '.join(str(err).split())[:300]}") from None
