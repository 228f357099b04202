"""Data loading and checking (kubetune_trainer.data): formats, column mapping, splits, mixing, and
bad data failing early with the file, row and column named. No model is loaded here."""

from __future__ import annotations

import json

import pytest

from kubetune.api.v1alpha1 import Spec
from kubetune_trainer.data import eval_dataset, eval_sets, load_tasks, mixed_train
from kubetune_trainer.errors import UserError


def _spec(datasets, objective="causal-lm"):
    return Spec.model_validate(
        {"technique": "full", "objective": objective, "model": {"uri": "file:///nowhere"}, "datasets": datasets}
    )


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_jsonl_with_column_mapping_and_eval_fraction(tmp_path):
    f = _jsonl(tmp_path / "d.jsonl", [{"body": f"text {i}", "extra": i} for i in range(20)])
    tasks = load_tasks(
        _spec([{"uri": f"file://{f}", "format": "text", "columns": {"text": "body"}, "evalFraction": 0.25}]), tmp_path
    )
    (task,) = tasks
    assert task.train.column_names == ["text"] and len(task.train) == 15 and len(task.eval) == 5
    assert set(task.train["text"]) | set(task.eval["text"]) == {f"text {i}" for i in range(20)}


def test_prefix_of_csv_files_and_messages_json(tmp_path):
    d = tmp_path / "csvs"
    d.mkdir()
    (d / "a.csv").write_text("prompt,completion\nhi,there\n")
    (d / "b.csv").write_text("prompt,completion\nup,down\nleft,right\n")
    msgs = tmp_path / "m.json"
    msgs.write_text(
        json.dumps([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}])
    )
    spec = _spec(
        [
            {"name": "pc", "uri": f"file://{d}/", "format": "prompt-completion"},
            {"name": "chat", "uri": f"file://{msgs}", "format": "messages"},
        ],
        objective="instruction",
    )
    pc, chat = load_tasks(spec, tmp_path)
    assert sorted(pc.train["prompt"]) == ["hi", "left", "up"]
    assert chat.train[0]["messages"][1]["content"] == "a"


@pytest.mark.parametrize(
    "rows, fmt, expected",
    [
        ([{"text": "ok"}, {"txt": "no"}], "text", ["line 2", "missing column 'text'", "columns found: 'txt'"]),
        ([{"text": "ok"}, '{"text": "broken'], "text", ["line 2", "not valid JSON"]),
        ([], "text", ["no rows"]),
        ([{"text": 5}], "text", ["line 1", "column 'text'", "must be a string (got a number)"]),
        ([{"messages": "hello"}], "messages", ["line 1", "column 'messages'", "list of {role, content}"]),
        ([{"messages": [{"role": "user"}]}], "messages", ["line 1", "message 0 needs a string 'content'"]),
        ([{"text": "a", "label": None}], "classification", ["line 1", "label is missing"]),
        ([{"prompt": "p", "chosen": 3, "rejected": "r"}], "preference", ["line 1", "column 'chosen'"]),
    ],
)
def test_bad_rows_name_file_line_and_column(tmp_path, rows, fmt, expected):
    f = _jsonl(tmp_path / "bad.jsonl", rows)
    objective = {
        "text": "causal-lm",
        "messages": "instruction",
        "classification": "classification",
        "preference": "preference",
    }[fmt]
    with pytest.raises(UserError) as err:
        load_tasks(_spec([{"uri": f"file://{f}", "format": fmt}], objective), tmp_path)
    message = str(err.value)
    assert "bad.jsonl" in message
    for part in expected:
        assert part in message, message


def test_mapped_column_missing_names_the_mapping(tmp_path):
    f = _jsonl(tmp_path / "d.jsonl", [{"text": "x"}])
    with pytest.raises(UserError, match=r"missing column 'body' \(mapped to 'text' by spec.datasets\[0\].columns\)"):
        load_tasks(_spec([{"uri": f"file://{f}", "format": "text", "columns": {"text": "body"}}]), tmp_path)


def test_missing_file_and_mixed_types(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_tasks(_spec([{"uri": f"file://{tmp_path}/nope.jsonl", "format": "text"}]), tmp_path)
    d = tmp_path / "mixed"
    d.mkdir()
    _jsonl(d / "a.jsonl", [{"text": "x"}])
    (d / "b.csv").write_text("text\ny\n")
    with pytest.raises(UserError, match="mixes file types"):
        load_tasks(_spec([{"uri": f"file://{d}/", "format": "text"}]), tmp_path)


def test_mixing_by_weight_keeps_every_row_and_evals_per_task(tmp_path):
    a = _jsonl(tmp_path / "a.jsonl", [{"text": f"a{i}"} for i in range(10)])
    b = _jsonl(tmp_path / "b.jsonl", [{"text": f"b{i}"} for i in range(40)])
    spec = _spec(
        [
            {"name": "small", "uri": f"file://{a}", "format": "text", "weight": 1.0, "evalUri": f"file://{a}"},
            {"name": "large", "uri": f"file://{b}", "format": "text", "weight": 3.0, "evalFraction": 0.1},
        ]
    )
    tasks = load_tasks(spec, tmp_path)
    mixed = mixed_train(tasks, seed=1)
    texts = mixed["text"]
    # all_exhausted: every row of every task appears; weights set the ratio (~1:3).
    assert {f"a{i}" for i in range(10)} <= set(texts)
    assert {t for t in texts if t.startswith("b")} == set(tasks[1].train["text"])
    share_b = sum(t.startswith("b") for t in texts) / len(texts)
    assert 0.6 < share_b < 0.9
    assert set(eval_sets(tasks)) == {"small", "large"}
    assert isinstance(eval_dataset(tasks), dict)
    assert mixed_train(tasks[:1], seed=1) is tasks[0].train
    assert eval_dataset(tasks[:1]) is tasks[0].eval
