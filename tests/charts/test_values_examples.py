"""Every example value in charts/kubetune/values.yaml's comments is accepted by what consumes it: the values schema
(helm lint), the templates (render), and the operator the Deployment starts (`kubetune operator`'s own argument
parser and settings code, given the rendered container's args and env).

values.yaml writes an example after "e.g." in backquotes, as `key: value` of the key the comment stands above; a
bare "e.g." without one fails here, so no example escapes the check. `extraArgs: ["--verbose"]`, which the file
suggested once, crash-looped the operator: the parser refuses it, and so does this test."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
import yaml

from kubetune.doctor import operator_settings

helm = pytest.importorskip("helm_python.chart", reason="helm-python-sdk (the embedded Helm SDK) is not installed")
from tests.charts.test_chart import CHART, by_kind, render  # noqa: E402 - it needs helm_python, checked above

KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z][A-Za-z0-9]*):(\s|$)")
EXAMPLE = re.compile(r"e\.g\.\s*(?:#\s*)?`(?P<example>[^`]+)`")


@dataclass(frozen=True)
class Example:
    path: tuple[str, ...]  # the key it is an example of, from the top of the values
    value: object
    line: int

    @property
    def values(self) -> dict:
        values: dict = {}
        node = values
        for key in self.path[:-1]:
            node = node.setdefault(key, {})
        node[self.path[-1]] = self.value
        return values


def examples(text: str) -> list[Example]:
    found = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the mappings above the current line
    comment: list[str] = []
    comment_start = 0
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            if not comment:
                comment_start = number
            comment.append(stripped.lstrip("#").strip())
            continue
        match = KEY_LINE.match(line)
        if match is None:
            comment = []
            continue
        indent, key = len(match["indent"]), match["key"]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = (*(k for _, k in stack), key)
        stack.append((indent, key))
        block = " ".join(comment)
        assert block.count("e.g.") == len(EXAMPLE.findall(block)), (
            f"values.yaml:{comment_start}: an 'e.g.' without a `key: value` example in backquotes"
        )
        for example in EXAMPLE.findall(block):
            parsed = yaml.safe_load(example)
            assert isinstance(parsed, dict) and list(parsed) == [key], (
                f"values.yaml:{comment_start}: the example `{example}` is not one of `{key}:`, the key below it"
            )
            found.append(Example(path, parsed[key], comment_start))
        comment = []
    return found


EXAMPLES = examples((CHART / "values.yaml").read_text())


def test_the_examples_are_found():
    paths = {example.path for example in EXAMPLES}
    assert {
        ("extraArgs",),
        ("watchNamespaces",),
        ("trainer", "defaultOutputUri"),
        ("imagePullSecrets",),
        ("policy", "outputUriPrefix"),
        ("policy", "admissionPolicy", "validationActions"),
    } <= paths, paths


def test_a_bare_eg_is_refused():
    with pytest.raises(AssertionError, match="without a `key: value` example"):
        examples('# Extra arguments (e.g. ["--verbose"]).\nextraArgs: []\n')
    with pytest.raises(AssertionError, match="not one of `extraArgs:`"):
        examples("# e.g. `extraArg: [--log-format=json]`\nextraArgs: []\n")


def operator_refusal(values: dict) -> str:
    (deployment,) = by_kind(render(values), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    settings, refusal = operator_settings(container)
    assert (settings is None) == bool(refusal)
    return refusal


@pytest.mark.parametrize("example", EXAMPLES, ids=[".".join(e.path) + f"@{e.line}" for e in EXAMPLES])
def test_every_example_value_is_accepted(example):
    values = example.values
    report = helm.lint(str(CHART), values, strict=True)
    assert [m for m in report["messages"] if m["severity"] >= 2] + report["errors"] == [], values
    assert operator_refusal(values) == "", values


def test_the_operator_refuses_what_its_parser_does_not_know():
    """The check has teeth: the example the file once gave would crash-loop the operator, and a bad setting too."""
    assert "unrecognized arguments: --verbose" in operator_refusal({"extraArgs": ["--verbose"]})
    refusal = operator_refusal({"extraArgs": ["--log-format=xml"]})
    assert "--log-format" in refusal and "xml" in refusal
    assert operator_refusal({}) == ""


def operator_config(values: dict):
    (deployment,) = by_kind(render(values), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return operator_settings(container)[0]


def test_the_examples_reach_the_operator():
    by_path = {example.path: example for example in EXAMPLES}
    assert operator_config(by_path[("extraArgs",)].values).log_format == "json"
    watch = by_path[("watchNamespaces",)]
    assert operator_config(watch.values).namespaces == tuple(watch.value)
    prefix = by_path[("policy", "outputUriPrefix")]
    assert operator_config(prefix.values).policy.output_uri_prefix == prefix.value
