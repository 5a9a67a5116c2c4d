"""The /workflow contract: formats as copilot writes them, parse errors, atomic outputs, _ERROR."""

import datetime as dt
import os

import pytest

from stageflow.runtime import contract
from stageflow.runtime.contract import File, StageError, StageTree

UTC = dt.timezone.utc


@pytest.mark.parametrize("kind, text, expected", [
    (str, "hello world", "hello world"),
    (str, "  kept as is\n", "  kept as is\n"),
    (int, "42", 42),
    (int, "-7", -7),
    (float, "12", 12.0),
    (float, "0.125", 0.125),
    (float, "-3.5", -3.5),
    (bool, "true", True),
    (bool, "false", False),
    (dt.datetime, "2024-05-10T00:00:00Z", dt.datetime(2024, 5, 10, tzinfo=UTC)),
    (dt.datetime, "2024-05-10T01:02:03.5+02:00",
     dt.datetime(2024, 5, 10, 1, 2, 3, 500000, tzinfo=dt.timezone(dt.timedelta(hours=2)))),
    (dt.timedelta, "72h10m0s", dt.timedelta(hours=72, minutes=10)),
    (dt.timedelta, "1.5s", dt.timedelta(seconds=1.5)),
    (dt.timedelta, "300ms", dt.timedelta(milliseconds=300)),
    (dt.timedelta, "-1m30s", -dt.timedelta(minutes=1, seconds=30)),
    (dt.timedelta, "0s", dt.timedelta(0)),
])
def test_reads_each_type_as_copilot_writes_it(wf_root, kind, text, expected):
    (wf_root / "inputs" / "value").write_text(text)
    value = StageTree().read("value", kind)
    assert value == expected and type(value) is kind


@pytest.mark.parametrize("value, text", [
    (12.0, "12"), (0.1, "0.1"), (1e20, "100000000000000000000"), (1.5e-7, "0.00000015"), (-2.25, "-2.25"),
    (7, "7"), (True, "true"), (False, "false"), ("a b", "a b"),
    (dt.datetime(2024, 5, 10, 2, tzinfo=dt.timezone(dt.timedelta(hours=2))), "2024-05-10T00:00:00Z"),
    (dt.timedelta(hours=72, minutes=10), "72h10m0s"), (dt.timedelta(seconds=1.5), "1.5s"),
    (dt.timedelta(0), "0s"), (-dt.timedelta(seconds=90), "-1m30s"),
])
def test_formats_values_as_copilot_writes_them(value, text):
    assert contract.format_value(value) == text


@pytest.mark.parametrize("value", [0.1, 12.0, 1e20, -3.75, dt.timedelta(hours=1, microseconds=5),
                                   dt.timedelta(days=3, seconds=7), dt.datetime(2020, 1, 1, tzinfo=UTC)])
def test_format_then_parse_round_trips(value):
    assert contract.parse_value(contract.format_value(value), type(value)) == value


@pytest.mark.parametrize("kind, text, message", [
    (int, "1.5", "input value: expected a base-10 integer, found '1.5'"),
    (int, "", "input value: expected a base-10 integer, found ''"),
    (int, "ten", "input value: expected a base-10 integer, found 'ten'"),
    (float, "1,5", "input value: expected a decimal number, found '1,5'"),
    (bool, "yes", "input value: expected true or false, found 'yes'"),
    (bool, "True", "input value: expected true or false, found 'True'"),
    (dt.datetime, "2024-05-10T00:00:00", "input value: expected an RFC 3339 timestamp with a time zone"),
    (dt.datetime, "yesterday", "input value: expected an RFC 3339 timestamp such as"),
    (dt.timedelta, "10 minutes", "input value: expected a Go duration such as 72h10m0s, found '10 minutes'"),
    (dt.timedelta, "5", "input value: expected a Go duration"),
    # Other scripts' digits, which Python's int() and \\d take and copilot's Go does not (issue 20: `--epochs ٣`)
    (int, "\u0663", "input value: expected a base-10 integer, found '\u0663'"),
    (int, "\uff11\uff12", "input value: expected a base-10 integer"),
    (float, "\u0663.5", "input value: expected a decimal number"),
    (dt.timedelta, "\u0663s", "input value: expected a Go duration"),
])
def test_parse_errors_name_the_input_the_expectation_and_the_value(wf_root, kind, text, message):
    (wf_root / "inputs" / "value").write_text(text)
    with pytest.raises(StageError) as err:
        StageTree().read("value", kind)
    assert str(err.value).startswith(message)


def test_missing_input_is_named(wf_root):
    with pytest.raises(StageError, match=r"^input epochs: missing; expected a int at .*inputs/epochs$"):
        StageTree().read("epochs", int)


def test_binary_primitive_is_refused(wf_root):
    (wf_root / "inputs" / "epochs").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(StageError, match="input epochs: expected a int as UTF-8 text, found binary data"):
        StageTree().read("epochs", int)


def test_file_input_returns_its_path(wf_root):
    (wf_root / "inputs" / "data").write_bytes(b"x")
    assert StageTree().read("data", File) == wf_root / "inputs" / "data"


@pytest.mark.parametrize("make, what", [
    (os.mkdir, "a directory"),
    (os.mkfifo, r"a FIFO \(named pipe\)"),
    (lambda path: path.symlink_to(path.parent / "nowhere"),
     r"a link that cannot be followed \(No such file or directory\)"),
])
def test_anything_but_a_regular_file_is_refused_and_named(wf_root, make, what):
    make(wf_root / "inputs" / "data")
    with pytest.raises(StageError, match=f"^input data: expected a regular file, found {what} at .*inputs/data$"):
        StageTree().read("data", File)


def test_symlink_out_of_the_tree_is_refused(wf_root, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere") / "secret"
    outside.write_text("x")
    (wf_root / "inputs" / "data").symlink_to(outside)
    with pytest.raises(StageError, match="input data: is a symlink to .*secret, outside the workflow tree"):
        StageTree().read("data", File)


def test_symlink_inside_the_tree_is_fine(wf_root):
    (wf_root / "outputs" / "up").write_text("x")
    (wf_root / "inputs" / "data").symlink_to(wf_root / "outputs" / "up")
    assert StageTree().read("data", File).read_text() == "x"


def test_output_file_is_invisible_until_complete(wf_root):
    tree = StageTree()
    with tree.output_file("model") as tmp:
        tmp.write_text("partial")
        assert not (wf_root / "outputs" / "model").exists()
        assert tmp.parent == wf_root / "outputs"  # same directory, so the rename is atomic
    assert (wf_root / "outputs" / "model").read_text() == "partial"
    assert os.listdir(wf_root / "outputs") == ["model"]


def test_output_file_left_unfinished_leaves_nothing(wf_root):
    with pytest.raises(RuntimeError):
        with StageTree().output_file("model") as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed mid-write")
    assert os.listdir(wf_root / "outputs") == []


def test_simple_output_is_written_as_text(wf_root):
    tree = StageTree()
    tree.write("rows", 150)
    tree.write("ratio", 12.0)
    assert (wf_root / "outputs" / "rows").read_text() == "150"
    assert (wf_root / "outputs" / "ratio").read_text() == "12"


def test_simple_output_over_copilots_limit_is_refused(wf_root):
    with pytest.raises(StageError, match="output note: 1025 bytes, more than copilot's 1024"):
        StageTree().write("note", "x" * 1025)


def test_output_name_taken_by_a_directory_is_refused(wf_root):
    (wf_root / "outputs" / "model").mkdir()
    with pytest.raises(StageError, match="output model: .* already exists as a directory"):
        StageTree().write("model", "x")


def test_naive_datetime_output_is_refused():
    with pytest.raises(ValueError, match="time zone"):
        contract.format_value(dt.datetime(2024, 1, 1))


def test_run_success_keeps_outputs_and_no_error(wf_root):
    (wf_root / "outputs" / contract.ERROR_FILE).write_text("stale from an earlier run")
    assert contract.run(lambda tree: tree.write("a", 1), outputs=["a"]) == 0
    assert sorted(os.listdir(wf_root / "outputs")) == ["a"]


def test_run_failure_writes_error_and_takes_back_outputs(wf_root):
    def body(tree):
        tree.write("a", 1)
        raise StageError("input x: bad value")
    assert contract.run(body, outputs=["a", "b"]) == 1
    assert os.listdir(wf_root / "outputs") == [contract.ERROR_FILE]
    assert (wf_root / "outputs" / contract.ERROR_FILE).read_text() == "input x: bad value\n"


def test_unexpected_exception_is_one_line_in_error(wf_root, capsys):
    def body(tree):
        raise ZeroDivisionError("division\nby zero")
    assert contract.run(body, outputs=[]) == 1
    assert (wf_root / "outputs" / contract.ERROR_FILE).read_text() == "ZeroDivisionError: division by zero\n"
    assert "Traceback" in capsys.readouterr().err  # the full trace goes to the log, not to _ERROR


@pytest.mark.parametrize("filler", ["y", "é"])
def test_a_huge_error_is_cut_to_a_short_line_that_keeps_its_start(wf_root, capsys, filler):
    message = "input x: " + filler * 3_000_000

    def body(tree):
        raise StageError(message)
    assert contract.run(body, outputs=[]) == 1
    error = (wf_root / "outputs" / contract.ERROR_FILE).read_bytes().decode("utf-8")  # cut between characters
    whole = len(message.encode())
    assert error.startswith("input x: " + filler * 1000) and error.count("\n") == 1
    assert error.endswith(f" … (cut here: the whole line was {whole} bytes)\n")
    assert len(error.encode()) <= contract.MAX_ERROR_LINE + 1
    assert len(capsys.readouterr().err) < 2 * contract.MAX_ERROR_LINE  # the log gets the short line too


def test_declared_output_not_written_is_an_error(wf_root):
    assert contract.run(lambda tree: tree.write("a", 1), outputs=["a", "metrics"]) == 1
    assert os.listdir(wf_root / "outputs") == [contract.ERROR_FILE]
    assert "output metrics: declared but not written by the stage" in (
        wf_root / "outputs" / contract.ERROR_FILE).read_text()


def test_workflow_root_defaults_to_slash_workflow(monkeypatch):
    monkeypatch.delenv("WORKFLOW_ROOT", raising=False)
    assert StageTree().root == contract.Path("/workflow")
