"""Training data: every spec.datasets entry loaded, renamed to its format's logical fields, checked
row by row, and split into train/eval. Bad data fails here, before any model is loaded, with a
message naming the file, the row (the line for JSON Lines) and the column.

Sources: a .jsonl/.json/.csv/.parquet file, a prefix of such files (one type), or
hf://datasets/org/name[@revision] (datasets.load_dataset with subset and split).

Mixing (multi-task): `mixed_train` interleaves tasks by weight with stopping_strategy
"all_exhausted": the weights set the mixture ratio and no row of any task is dropped (small tasks
are repeated); "first_exhausted" would stop at the end of the smallest task and silently throw
away most of the larger ones. (A very small weight on a large task makes the mixture long: the
weights are the user's statement of the ratio, we honour it.)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.api.constants import FORMAT_FIELDS, DatasetFormat
from kubetune.api.credentials import dataset_role, eval_dataset_role
from kubetune.api.uris import parse_uri
from kubetune_trainer.context import TaskData
from kubetune_trainer.errors import InfraError, UserError
from kubetune_trainer.reporting import quoted
from kubetune_trainer.sources import cached_dataset_folder, fetch_data_files

if TYPE_CHECKING:
    import datasets

    from kubetune.api.v1alpha1 import Dataset as DatasetSpec
    from kubetune.api.v1alpha1 import Spec


# --------------------------------------------------------------------------- row checks


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _messages_problem(value: Any) -> str | None:
    if not isinstance(value, list) or not value:
        return f"must be a non-empty list of {{role, content}} messages (got {_kind(value)})"
    for j, msg in enumerate(value):
        if not isinstance(msg, dict):
            return f"message {j} must be an object with role and content (got {_kind(msg)})"
        if not isinstance(msg.get("role"), str) or not msg.get("role"):
            return f"message {j} needs a string 'role' (got {_kind(msg.get('role'))})"
        if not isinstance(msg.get("content"), str):
            return f"message {j} needs a string 'content' (got {_kind(msg.get('content'))})"
    return None


def _text_or_messages_problem(value: Any) -> str | None:
    if isinstance(value, str):
        return None
    if isinstance(value, list):
        return _messages_problem(value)
    return f"must be a string or a list of {{role, content}} messages (got {_kind(value)})"


def _field_problem(fmt: DatasetFormat, field: str, value: Any) -> str | None:
    """What is wrong with one logical field's value, or None."""
    if fmt == DatasetFormat.MESSAGES:
        return _messages_problem(value)
    if fmt == DatasetFormat.CLASSIFICATION and field == "label":
        if value is None:
            return "label is missing (null)"
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            if isinstance(value, float) and value.is_integer():
                return None
            return f"must be an integer class index or a class name (got {_kind(value)})"
        return None
    if fmt in (DatasetFormat.TEXT, DatasetFormat.CLASSIFICATION):
        return None if isinstance(value, str) else f"must be a string (got {_kind(value)})"
    # prompt-completion, preference, prompt: plain text or conversational
    return _text_or_messages_problem(value)


# How many of a file's column names a "missing column" message lists.
MISSING_COLUMNS_SHOWN = 20


class _Checker:
    """Renames source columns to logical fields and checks every row of one source."""

    def __init__(self, spec_ds: DatasetSpec, index: int):
        self.format = DatasetFormat(spec_ds.format)
        self.fields = FORMAT_FIELDS[self.format]
        self.source = {f: spec_ds.columns.get(f, f) for f in self.fields}
        self.where_mapped = f"spec.datasets[{index}].columns"

    def _missing(self, where: str, field: str, found: Iterable[str]) -> UserError:
        # The columns found are the file's own words (CSV headers, JSON keys): quoted, bounded and few.
        src = self.source[field]
        mapped = f" (mapped to {field!r} by {self.where_mapped})" if src != field else ""
        names = sorted(map(str, found))
        found_list = ", ".join(quoted(n) for n in names[:MISSING_COLUMNS_SHOWN]) or "none"
        if len(names) > MISSING_COLUMNS_SHOWN:
            found_list += f" and {len(names) - MISSING_COLUMNS_SHOWN} more"
        return UserError(f"{where}: missing column {quoted(src)}{mapped}; columns found: {found_list}")

    def row(self, record: Any, where: str) -> dict[str, Any]:
        if not isinstance(record, dict):
            raise UserError(f"{where}: a row must be a JSON object (got {_kind(record)})")
        out = {}
        for field in self.fields:
            src = self.source[field]
            if src not in record:
                raise self._missing(where, field, record.keys())
            value = record[src]
            problem = _field_problem(self.format, field, value)
            if problem:
                raise UserError(f"{where}: column {quoted(src)}: {problem}")
            out[field] = value
        return out

    def columns(self, names: Iterable[str], where: str) -> None:
        names = list(names)
        for field in self.fields:
            if self.source[field] not in names:
                raise self._missing(where, field, names)


# --------------------------------------------------------------------------- readers


def _not_utf8(label: str, lineno: int, err: UnicodeDecodeError) -> UserError:
    # Bytes, not characters: the column is where the first byte that is not UTF-8 sits in its line.
    byte = err.object[err.start : err.start + 1].hex()
    hint = " (UTF-16?)" if err.object[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in err.object[:200] else ""
    return UserError(
        f"{label}: line {lineno}, column {err.start + 1}: not UTF-8 text (byte 0x{byte}){hint}; save the file as UTF-8"
    )


def _jsonl_rows(path: Path, label: str, checker: _Checker) -> Iterator[dict]:
    with path.open("rb") as fh:  # bytes: a decoding error then names its line and column
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise _not_utf8(label, lineno, err) from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # a UTF-8 byte order mark is harmless
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                what = err.msg.removesuffix(" at")  # "Invalid control character at"
                raise UserError(f"{label}: line {lineno}: not valid JSON ({what} at column {err.colno})") from None
            yield checker.row(record, f"{label}: line {lineno}")


def _json_rows(path: Path, label: str, checker: _Checker) -> Iterator[dict]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        lineno = data.count(b"\n", 0, err.start) + 1
        line_start = data.rfind(b"\n", 0, err.start) + 1
        line_err = UnicodeDecodeError(
            "utf-8", data[line_start : err.end + 1], err.start - line_start, err.end - line_start, err.reason
        )
        raise _not_utf8(label, lineno, line_err) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # JSON Lines saved as .json
            yield from _jsonl_rows(path, label, checker)
            return
        raise UserError(f"{label}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    if isinstance(doc, dict):  # {"data": [...]} style: the one list inside
        lists = [v for v in doc.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise UserError(f"{label}: expected a JSON list of rows (or an object holding one list)")
        doc = lists[0]
    if not isinstance(doc, list):
        raise UserError(f"{label}: expected a JSON list of rows (got {_kind(doc)})")
    for i, record in enumerate(doc):
        yield checker.row(record, f"{label}: row {i}")


def _arrow_file(path: Path, label: str, checker: _Checker, kind: str) -> datasets.Dataset:
    import datasets

    try:
        ds = datasets.load_dataset(kind, data_files=[str(path)], split="train")
    except Exception as err:  # noqa: BLE001 - any parse failure is the file's fault
        raise UserError(f"{label}: cannot be read as {kind.upper()} ({type(err).__name__}: {str(err)[:200]})") from None
    checker.columns(ds.column_names, label)
    first_row = 2 if kind == "csv" else 0  # csv: header is line 1
    row_word = "line" if kind == "csv" else "row"
    sources = [checker.source[f] for f in checker.fields]
    for i, record in enumerate(ds.select_columns(sources)):
        checker.row(record, f"{label}: {row_word} {i + first_row}")
    return ds.select_columns(sources).rename_columns({s: f for f, s in checker.source.items() if s != f})


def _load_files(files: list[Path], labels: list[str], checker: _Checker, what: str) -> datasets.Dataset:
    import datasets

    suffixes = {p.suffix.lower() for p in files}
    if len(suffixes) > 1:
        raise UserError(f"{what}: mixes file types ({', '.join(sorted(suffixes))}); use one type per dataset")
    suffix = suffixes.pop()
    if suffix in (".jsonl", ".json"):
        read = _jsonl_rows if suffix == ".jsonl" else _json_rows
        rows = [row for path, label in zip(files, labels, strict=True) for row in read(path, label, checker)]
        if not rows:
            raise UserError(f"{what}: no rows (empty dataset)")
        try:
            return datasets.Dataset.from_list(rows)
        except Exception as err:  # noqa: BLE001 - e.g. a column that is a string in one row and a list in another
            raise UserError(f"{what}: rows do not share one type per column ({str(err)[:200]})") from None
    parts = [
        _arrow_file(p, label, checker, "csv" if suffix == ".csv" else "parquet")
        for p, label in zip(files, labels, strict=True)
    ]
    parts = [p for p in parts if len(p)]
    if not parts:
        raise UserError(f"{what}: no rows (empty dataset)")
    try:
        return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    except Exception as err:  # noqa: BLE001
        raise UserError(f"{what}: files do not share the same columns and types ({str(err)[:200]})") from None


def _load_hf(uri: str, spec_ds: DatasetSpec, checker: _Checker, role: str, what: str, dest: Path) -> datasets.Dataset:
    import datasets

    from kubetune_trainer.sources.huggingface import hub_token

    parsed = parse_uri(uri)
    # The platform's model cache, where it holds this repository: a local folder of it, read the same way.
    cached = cached_dataset_folder(uri, dest, role=role, what=what)
    try:
        if cached is not None:
            ds = datasets.load_dataset(str(cached), name=spec_ds.subset, split=spec_ds.split)
        else:
            ds = datasets.load_dataset(
                parsed.location,
                name=spec_ds.subset,
                split=spec_ds.split,
                revision=parsed.revision,
                token=hub_token(role),
            )
    except Exception as err:  # noqa: BLE001 - translated
        raise _translate_hf_dataset_error(err, f"{what}: {uri}") from None
    label = f"{what}: {uri} (split {spec_ds.split})"
    checker.columns(ds.column_names, label)
    sources = [checker.source[f] for f in checker.fields]
    ds = ds.select_columns(sources)
    for i, record in enumerate(ds):
        checker.row(record, f"{label}: row {i}")
    if not len(ds):
        raise UserError(f"{label}: no rows (empty dataset)")
    return ds.rename_columns({s: f for f, s in checker.source.items() if s != f})


def _translate_hf_dataset_error(err: Exception, label: str) -> Exception:
    from datasets.exceptions import DatasetNotFoundError

    from kubetune_trainer.sources.huggingface import translate_hub_error

    if isinstance(err, DatasetNotFoundError):
        return UserError(f"{label}: no such dataset, or it is private and the token cannot read it")
    text = str(err)
    if isinstance(err, ValueError) and (
        "Unknown split" in text or "BuilderConfig" in text or "config name" in text.lower()
    ):
        return UserError(f"{label}: {text[:300]}")
    if isinstance(err, ConnectionError) or "offline" in text.lower() or "couldn't reach" in text.lower():
        return InfraError(f"{label}: the Hugging Face Hub cannot be reached and the dataset is not cached")
    translated = translate_hub_error(err, label)
    return translated if translated is not err else InfraError(f"{label}: cannot be loaded ({type(err).__name__})")


def load_source(uri: str, spec_ds: DatasetSpec, index: int, *, role: str, spec: Spec | None, dest: Path, what: str):
    """One URI of one dataset entry as a checked Dataset with logical columns."""
    checker = _Checker(spec_ds, index)
    if parse_uri(uri).scheme == "hf":
        return _load_hf(uri, spec_ds, checker, role, what, dest)
    files = fetch_data_files(uri, dest, role=role, spec=spec, what=what)
    local_is_source = parse_uri(uri).scheme == "file"
    if local_is_source:
        labels = [str(p) for p in files]
    else:  # name the object the user knows, not our cache path
        base = uri if not parse_uri(uri).is_prefix else uri.rstrip("/") + "/"
        labels = [
            uri if len(files) == 1 and not parse_uri(uri).is_prefix else base + p.relative_to(dest).as_posix()
            for p in files
        ]
    return _load_files(files, labels, checker, f"{what} ({uri})")


# --------------------------------------------------------------------------- tasks


def load_tasks(spec: Spec, work_dir: Path) -> list[TaskData]:
    tasks = []
    seed = spec.hyperparameters.seed
    for i, ds in enumerate(spec.datasets):
        train = load_source(
            ds.uri,
            ds,
            i,
            role=dataset_role(i),
            spec=spec,
            dest=work_dir / f"dataset-{i}",
            what=f"spec.datasets[{i}].uri",
        )
        evaluation = None
        if ds.eval_uri:
            evaluation = load_source(
                ds.eval_uri,
                ds,
                i,
                role=eval_dataset_role(i),
                spec=spec,
                dest=work_dir / f"dataset-{i}-eval",
                what=f"spec.datasets[{i}].evalUri",
            )
        elif ds.eval_fraction:
            if len(train) < 2:
                raise UserError(
                    f"spec.datasets[{i}].evalFraction: the dataset has {len(train)} row(s), too few to split"
                )
            held_out = max(1, int(round(len(train) * ds.eval_fraction)))
            split = train.train_test_split(test_size=held_out, seed=seed, shuffle=True)
            train, evaluation = split["train"], split["test"]
        tasks.append(
            TaskData(name=ds.name, format=DatasetFormat(ds.format), weight=ds.weight, train=train, eval=evaluation)
        )
    return tasks


def select(tasks: list[TaskData], formats: Iterable[DatasetFormat] | None) -> list[TaskData]:
    wanted = None if formats is None else {DatasetFormat(f) for f in formats}
    return [t for t in tasks if wanted is None or t.format in wanted]


def mixed_train(tasks: list[TaskData], seed: int, formats: Iterable[DatasetFormat] | None = None) -> datasets.Dataset:
    """The training rows of the tasks (of `formats`, if given), mixed by weight; one task passes through."""
    import datasets

    chosen = select(tasks, formats)
    if not chosen:
        raise UserError(f"no dataset of format {', '.join(map(str, formats or []))} in spec.datasets")
    if len(chosen) == 1:
        return chosen[0].train
    total = sum(t.weight for t in chosen)
    try:
        return datasets.interleave_datasets(
            [t.train for t in chosen],
            probabilities=[t.weight / total for t in chosen],
            seed=seed,
            stopping_strategy="all_exhausted",
        )
    except ValueError as err:
        names = ", ".join(t.name for t in chosen)
        raise UserError(
            f"datasets {names}: their columns differ in type and cannot be mixed ({str(err)[:200]})"
        ) from None


def eval_sets(tasks: list[TaskData], formats: Iterable[DatasetFormat] | None = None) -> dict[str, datasets.Dataset]:
    """{task name: eval rows} for the tasks that have evaluation data."""
    return {t.name: t.eval for t in select(tasks, formats) if t.eval is not None}


def eval_dataset(tasks: list[TaskData], formats: Iterable[DatasetFormat] | None = None):
    """What to pass as a Trainer's eval_dataset: None, one Dataset (single task: eval_loss) or a dict
    (several tasks: the Trainer reports eval_<task>_loss for each)."""
    sets = eval_sets(tasks, formats)
    if not sets:
        return None
    if len(select(tasks, formats)) == 1:
        return next(iter(sets.values()))
    return sets
