"""Property-based fuzzing of manifests into the validation every entry point uses (`kubetune
validate`, the operator, the trainer): whatever the input, no exception escapes, every problem names a
field path that exists in the manifest (or its parent), and valid results re-validate."""

from __future__ import annotations

import copy
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubetune.api.validation import check_manifest
from kubetune.manifests import validate_files
from tests.api.manifests import base

EXAMPLES = int(os.environ.get("KUBETUNE_FUZZ_EXAMPLES", "1500"))

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(
        ["lora", "qlora", "full", "hf://a/b", "s3://bucket/x.jsonl", "file:///x", "64Gi", "-1", "", "all-linear"]
    ),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


def _paths(node, prefix=()):
    """Every (path tuple) inside a manifest, for choosing where to mutate."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, prefix + (i,))


ALL_PATHS = [p for p in _paths(base()) if p]
FIELD_NAMES = st.sampled_from(
    [
        "technique",
        "objective",
        "lora",
        "rank",
        "datasets",
        "format",
        "uri",
        "columns",
        "quantization",
        "bits",
        "rlhf",
        "numGenerations",
        "hyperparameters",
        "batchSize",
        "resources",
        "cpu",
        "memory",
        "metadata",
        "name",
        "x",
    ]
)


@st.composite
def mutated_manifests(draw):
    doc = base()
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        path = draw(st.sampled_from(ALL_PATHS))
        node = doc
        try:
            for part in path[:-1]:
                node = node[part]
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                node[path[-1]] = draw(values)
            elif action == "delete" and isinstance(node, dict):
                node.pop(path[-1], None)
            elif isinstance(node, dict):
                node[draw(FIELD_NAMES)] = draw(values)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation changed the shape: fine, the manifest is just odder
    return doc


TOP_LEVEL = ("apiVersion", "kind", "metadata", "spec", "status")


def _names_a_field(doc, path: str) -> bool:
    """A problem's path is empty (the document as a whole) or starts at a top-level field that the
    schema defines or the manifest holds."""
    if not path:
        return True
    head = path.split(".")[0].split("[")[0]
    return head in TOP_LEVEL or (isinstance(doc, dict) and head in doc)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_manifests())
def test_validation_never_raises_and_always_names_a_field(doc):
    snapshot = copy.deepcopy(doc)
    job, problems = check_manifest(doc)
    assert doc == snapshot, "validation must not modify its input"
    if job is None:
        assert problems
        for problem in problems:
            assert problem.message
            assert _names_a_field(doc, problem.path), str(problem)
    else:
        assert problems == []
        again, more = check_manifest(job.to_wire())
        # metadata passes unknown API-server fields through; the spec must round-trip exactly
        assert more == [] and again.spec == job.spec and again.metadata.name == job.metadata.name


@settings(max_examples=max(EXAMPLES // 10, 50), deadline=None)
@given(st.binary(max_size=300))
def test_validate_cli_survives_arbitrary_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "input.yaml"
    path.write_bytes(data)
    lines = validate_files([str(path)])  # must not raise
    assert all(line.startswith(f"{path}: ") for line in lines)


@settings(max_examples=EXAMPLES // 2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_manifests())
def test_operator_spec_validation_raises_only_spec_errors(doc):
    from kubetune.api.validation import SpecError, parse_spec

    try:
        spec = parse_spec(doc.get("spec"))
    except SpecError as err:
        assert err.problems and all(p.path.startswith("spec") for p in err.problems), err.problems
    else:
        assert parse_spec(spec.to_wire()) == spec
