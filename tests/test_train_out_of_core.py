"""Train past what its tier holds: the streaming path against the in-memory one, and the in-memory path's model
bytes as they were before there was a streaming path."""

import json

import pytest

from conftest import load_stage, run_main, source_table, write_settings, write_snapshot

pytestmark = pytest.mark.iris  # the recorded model bytes are the iris schema's

train = load_stage("train")


@pytest.mark.parametrize("given, sha256", [
    ({"epochs": 5, "batch_size": 16}, "0029ce92cd89847b0b6cd997452112a02f366bd6b94a12df9cf1002e40e45245"),
    ({"epochs": 30, "batch_size": 8, "early_stopping": 2, "learning_rate": 0.5, "seed": 3},
     "aab85bb9bea1bf295d87e34a2998ed5fa020c0659cdaabc6a5bd2986cb86d06a"),
])
def test_the_in_memory_path_trains_the_model_it_trained_before_the_streaming_path(train_root, given, sha256):
    """The same inputs give the model bytes main gave before train could stream (scikit-learn and skops as
    pinned in stages/train/requirements.txt): data that fits is trained exactly as it always was."""
    table = source_table(range(1, 301)).drop_columns(["RandomColumn"])
    write_snapshot(train_root / "inputs" / "processed_data", table)
    write_settings(train_root, **given)
    assert run_main(train, train_root) == (0, None)
    assert json.loads((train_root / "outputs" / "metrics").read_text())["model_sha256"] == sha256
