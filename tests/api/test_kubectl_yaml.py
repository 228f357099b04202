"""Manifests read as kubectl reads them (operator/kubetune/manifests.py): go-yaml v2's scalars and merge keys,
sigs.k8s.io/yaml's JSON conversion, and one line (never a traceback) for what kubectl or the API server
cannot carry. Expected values follow go.yaml.in/yaml/v2 decode_test.go (unmarshalTests for untyped maps,
mergeTests) and sigs.k8s.io/yaml yaml.go (convertToJSONableObject), then the JSON the API server decodes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from kubetune.manifests import ManifestFileError, load_job, load_manifests, resolve_plain, validate_files
from tests.api.manifests import base


def _load(tmp_path: Path, text: str) -> dict:
    path = tmp_path / "doc.yaml"
    path.write_text(text)
    (loaded,) = load_manifests(path)
    assert loaded.problems == []
    return loaded.doc


# (plain scalar, what go-yaml v2 decodes it to for an untyped target)
SCALARS = [
    ("hi", "hi"), ("true", True), ("10", 10), ("0b10", 2), ("0xA", 10), ("0.1", 0.1), (".1", 0.1), ("-10", -10),
    ("-.1", -0.1), ("6.8523e+5", 6.8523e5), ("685.230_15e+03", 685.23015e3), ("685_230.15", 685230.15),
    ("y", True), ("NO", False), ("True", True), ("on", True), ("Off", False), ("685230", 685230),
    ("+685_230", 685230), ("02472256", 685230), ("0x_0A_74_AE", 685230), ("0b1010_0111_0100_1010_1110", 685230),
    ("-0b101010", -42), ("-0b1000000000000000000000000000000000000000000000000000000000000000", -(2**63)),
    ("18446744073709551616", float(2**64)), ("~", None), ("null", None), ("", None),
    # what this project cares about: kubectl sends these as numbers, PyYAML alone reads strings or octal wrongly
    ("1e-4", 1e-4), ("1e3", 1000.0), ("2.0e-4", 2e-4), ("010", 8), ("08", 8.0), ("1_000", 1000),
    ("2024-01-02", "2024-01-02"), ("2001-12-14t21:59:43.10-05:00", "2001-12-14t21:59:43.10-05:00"),
    ("1e400", "1e400"), ("Infinity", "Infinity"), ("NaN", "NaN"), ("0o17", 15), ("1.2.3", "1.2.3"),
]  # fmt: skip


@pytest.mark.parametrize("text,expected", SCALARS, ids=[s[0] or "empty" for s in SCALARS])
def test_plain_scalars_resolve_as_go_yaml_v2_resolves_them(text, expected):
    value = resolve_plain(text)
    assert value == expected and type(value) is type(expected)


def test_special_floats_resolve_and_are_then_refused():
    assert math.isnan(resolve_plain(".NaN")) and resolve_plain("-.inf") == -math.inf


def test_numbers_arrive_as_the_json_kubectl_sends(tmp_path):
    doc = _load(tmp_path, "a: 1e-4\nb: 1e3\nc: 8.0\nd: !!float 1\ne: 3.5\nf: 1e21\ng: 0x10\nh: '1e-4'\ni: !!str 10\n")
    # a float with no fraction travels as an integer; quoted and !!str values stay strings
    assert doc == {"a": 1e-4, "b": 1000, "c": 8, "d": 1, "e": 3.5, "f": 1e21, "g": 16, "h": "1e-4", "i": "10"}
    assert [type(doc[k]) for k in "abcdf"] == [float, int, int, int, float]


def test_keys_become_json_strings_as_sigs_k8s_io_yaml_makes_them(tmp_path):
    doc = _load(tmp_path, "1: a\ntrue: b\n1.5: c\n1e6: d\n0x10: e\n2024-01-02: f\n0.1: g\n")
    assert doc == {"1": "a", "true": "b", "1.5": "c", "1e+06": "d", "16": "e", "2024-01-02": "f", "0.1": "g"}
    # two spellings of one key: kubectl would keep either at random; refused like any duplicate
    path = tmp_path / "twice.yaml"
    path.write_text("true: a\nyes: b\n")
    with pytest.raises(ManifestFileError, match="duplicate key 'true'"):
        load_manifests(path)


MERGES = """
anchors:
  list:
    - &CENTER { "x": 1, "y": 2 }
    - &LEFT   { "x": 0, "y": 2 }
    - &BIG    { "r": 10 }
    - &SMALL  { "r": 1 }
plain: {"x": 1, "y": 2, "r": 10, label: center/big}
mergeOne: {<<: *CENTER, "r": 10, label: center/big}
mergeMultiple: {<<: [*CENTER, *BIG], label: center/big}
override: {<<: [*BIG, *LEFT, *SMALL], "x": 1, label: center/big}
shortTag: {!!merge "<<": [*CENTER, *BIG], label: center/big}
inlineMap: {<<: {"x": 1, "y": 2, "r": 10}, label: center/big}
inlineSequenceMap: {<<: [*CENTER, {"r": 10}], label: center/big}
"""


def test_merge_keys_as_go_yaml_applies_them(tmp_path):
    doc = _load(tmp_path, MERGES)
    want = {"x": 1, "y": 2, "r": 10, "label": "center/big"}
    assert {name: doc[name] for name in doc if name != "anchors"} == {name: want for name in doc if name != "anchors"}
    # go-yaml merges where `<<` stands: a key after it wins, a key before it is overwritten
    assert _load(tmp_path, "d: &d {a: 1}\nafter: {<<: *d, a: 2}\nbefore: {a: 2, <<: *d}\n") == {
        "d": {"a": 1}, "after": {"a": 2}, "before": {"a": 1}}  # fmt: skip


def test_a_manifest_with_defaults_merged_in_and_numbers_in_exponent_form_is_valid(tmp_path):
    path = tmp_path / "job.yaml"
    doc = base()
    merged = "spec:\n  hyperparameters:\n    <<: &hp {learningRate: 1e-4, batchSize: 8.0}\n    epochs: 2\n"
    text = yaml.safe_dump(doc).replace("spec:\n", merged, 1)
    path.write_text(text)
    assert validate_files([str(path)]) == []
    job = load_job(path)
    assert job.spec.hyperparameters.learning_rate == 1e-4 and job.spec.hyperparameters.batch_size == 8


@pytest.mark.parametrize(
    "field,value,fragment",
    [
        ("learningRate", ".nan", "not a number JSON can carry"),
        ("learningRate", ".inf", "not a number JSON can carry"),
        ("learningRate", "-.Inf", "not a number JSON can carry"),
        ("seed", "9223372036854775808", "beyond the 64-bit integers"),
        ("seed", "-9223372036854775809", "beyond the 64-bit integers"),
        ("maxSteps", "0xFFFFFFFFFFFFFFFF", "beyond the 64-bit integers"),
        ("maxSteps", "99999999999999999999999", "beyond the 64-bit integers"),
    ],
)
def test_values_kubectl_or_the_api_server_cannot_carry_are_one_line_naming_the_field(tmp_path, field, value, fragment):
    path = tmp_path / "job.yaml"
    text = yaml.safe_dump(base()).replace("spec:\n", f"spec:\n  hyperparameters:\n    {field}: {value}\n", 1)
    path.write_text(text)
    (line,) = validate_files([str(path)])
    assert line.startswith(f"{path}: job-a: spec.hyperparameters.{field}: {value} ") and fragment in line


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("? [a, b]\n: x\n", "a list cannot be a mapping key"),
        ("{a: 1}: x\n", "a mapping cannot be a mapping key"),
        ("spec:\n  ? {a: 1}\n  : x\n", "a mapping cannot be a mapping key (in spec)"),
        ("~: x\n", "unsupported mapping key"),
        ("a: &a {<<: *a}\n", "contains itself"),
        ("a: {<<: [1, 2]}\n", "map merge requires map or sequence of maps"),
        ("a: " + "[" * 2000 + "]" * 2000 + "\n", "nested more than 100 levels deep"),
        ("".join(f"{' ' * 2 * i}k{i}:\n" for i in range(300)) + " " * 600 + "v: 1\n", "more than 100 levels"),
        ("a: !!int abc\n", "cannot decode `abc` as a !!int"),
        ("kind: a\nkind: b\n", "duplicate key 'kind' (first at line 1)"),
    ],
    ids=["list-key", "mapping-key", "nested-mapping-key", "null-key", "recursive-merge", "merge-of-ints",
         "deep-flow", "deep-block", "bad-explicit-tag", "duplicate-key"],
)  # fmt: skip
def test_yaml_kubectl_refuses_is_one_line(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ManifestFileError) as err:
        load_manifests(path)
    assert str(err.value).startswith("not valid YAML: ") and fragment in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_excessive_aliasing_is_refused_before_it_expands(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]  # 10^9 leaves
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestFileError, match="excessive aliasing"):
        load_manifests(path)
