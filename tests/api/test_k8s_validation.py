"""The port of Kubernetes' validation (operator/kubetune/api/k8s_validation.py) against Kubernetes' own test
vectors, and the CRD's form of each rule (patterns and CEL) against the Python form, so `kubetune validate`,
the operator and the API server accept the same values and the child objects are never refused.

Vectors from kubernetes staging/src/k8s.io/apimachinery: pkg/api/validate/content/kube_test.go
(TestIsLabelKey, TestIsLabelValue), pkg/util/validation/validation_test.go (TestIsDNS1123Subdomain,
TestIsDNS1035Label) and pkg/api/resource/quantity_test.go (TestQuantityParse)."""

from __future__ import annotations

import re

import celpy
import pytest

from kubetune.api import k8s_validation as k8s
from kubetune.api.validation import SpecError, check_manifest, parse_spec
from tests.api import crdcheck
from tests.api.manifests import base

LABEL_KEYS_GOOD = [
    "simple", "now-with-dashes", "1-starts-with-num", "1234", "simple/simple", "now-with-dashes/simple",
    "now-with-dashes/now-with-dashes", "now.with.dots/simple", "now-with.dashes-and.dots/simple", "1-num.2-num/3-num",
    "1234/5678", "1.2.3.4/5678", "Uppercase_Is_OK_123", "example.com/Uppercase_Is_OK_123", "requests.storage-foo",
    "a" * 63, "a" * 253 + "/" + "b" * 63,
]  # fmt: skip
LABEL_KEYS_BAD = [
    "nospecialchars%^=@", "cantendwithadash-", "-cantstartwithadash-", "only/one/slash", "Example.com/abc",
    "example_com/abc", "example.com/", "/simple", "a" * 64, "a" * 254 + "/abc",
    "gpu type", "ends-with-newline\n",
]  # fmt: skip
LABEL_VALUES_GOOD = ["simple", "now-with-dashes", "1-starts-with-num", "end-with-num-1", "1234", "a" * 63, ""]
LABEL_VALUES_BAD = [
    "nospecialchars%^=@", "Tama-nui-te-rā.is.Māori.sun", "\\backslashes\\are\\bad", "-starts-with-dash",
    "ends-with-dash-", ".starts.with.dot", "ends.with.dot.", "a" * 64,
]  # fmt: skip
SUBDOMAINS_BAD = [
    "", "A", "ABC", "aBc", "A1", "A-1", "1-A", "-", "a-", "-a", "1-", "-1", "_", "a_", "_a", "a_b", "1_", "_1", "1_2",
    ".", "a.", ".a", "a..b", "1.", ".1", "1..2", " ", "a ", " a", "a b", "1 ", " 1", "1 2", "A.a", "aB.a", "ab.A",
    "a@b", "a,b", "a;b", "a:b", "a%b", "a?b", "a$b", "a" * 254,
]  # fmt: skip
SUBDOMAINS_GOOD = ["a", "ab", "a-1", "1--a--b--2", "0.a", "a.b.c.d.e", "1.2.3.4.5", "a" * 253]
DNS1035_GOOD = ["a", "ab", "abc", "a1", "a-1", "a--1--2--b", "a" * 63]
DNS1035_BAD = [
    "0", "01", "012", "1a", "1-a", "1--a--b--2", "", "A", "ABC", "aBc", "A1", "A-1", "1-A", "-", "a-", "-a", "1-", "-1",
    "_", "a_", "_a", "a_b", "1_", "_1", "1_2", ".", "a.", ".a", "a.b", "1.", ".1", "1.2", " ", "a ", " a", "a b",
    "1 ", " 1", "1 2", "a" * 64,
]  # fmt: skip
# positive quantities of TestQuantityParse's table, and its invalid ones (plus the 1e3.5)
QUANTITIES_GOOD = [
    "7Mi", "6Gi", "3Ei", "100Ti", "5n", "4u", "3m", "9", "8k", "7M", "6G", "5T", "2P", "1E", "1E-3", "1e3", "1E6",
    "1e18", "100.035k", "0.001", "0.0005k", "0.5e0", "0.5e-1", "10.035M", "1.2e3", "1.3E+6", "1.53E12", "1.01E",
    "3.001n", "1.1E-9", "0.0000000001", "9Ei", "12E", "100.035Ki", "0.5Mi", "0.000000000001Ki", ".001", ".0001k",
    "1.", "1.G", "+1",
]  # fmt: skip
QUANTITIES_BAD = [
    "1.1.M", "1+1.0M", "0.1mi", "0.1am", "aoeu", ".5i", "1i", "-3.01i", "-3.01e-", "1e4294967297", " 1", "1 ",
    "1e3.5", "1K", "1ki", "1KiB", "1e", "1e+", "1e1.5", "1_000", "0x10", "Inf", "NaN", "Infinity", "1,5", "1\n",
]  # fmt: skip


@pytest.mark.parametrize("value", LABEL_KEYS_GOOD)
def test_label_keys_kubernetes_accepts(value):
    assert k8s.is_qualified_name(value) == []


@pytest.mark.parametrize("value", LABEL_KEYS_BAD)
def test_label_keys_kubernetes_refuses(value):
    assert k8s.is_qualified_name(value)


def test_label_values_subdomains_and_dns1035_labels():
    assert [v for v in LABEL_VALUES_GOOD if k8s.is_label_value(v)] == []
    assert [v for v in LABEL_VALUES_BAD if not k8s.is_label_value(v)] == []
    assert [v for v in SUBDOMAINS_GOOD if k8s.is_dns1123_subdomain(v)] == []
    assert [v for v in SUBDOMAINS_BAD if not k8s.is_dns1123_subdomain(v)] == []
    assert [v for v in DNS1035_GOOD if k8s.is_dns1035_label(v)] == []
    assert [v for v in DNS1035_BAD if not k8s.is_dns1035_label(v)] == []


def test_quantities_as_kubernetes_parses_them():
    assert [q for q in QUANTITIES_GOOD if not k8s.parse_positive_quantity(q) > 0] == []
    refused = []
    for q in QUANTITIES_BAD:
        with pytest.raises(ValueError):
            k8s.parse_positive_quantity(q)
        refused.append(q)
    assert refused == QUANTITIES_BAD


def test_extended_resource_names():
    assert k8s.is_extended_resource_name("nvidia.com/gpu") == []
    assert k8s.is_extended_resource_name("amd.com/gpu") == []
    for native in ("gpu", "kubernetes.io/gpu", "example.kubernetes.io/gpu"):
        assert "native resource" in k8s.is_extended_resource_name(native)[0]
    assert k8s.is_extended_resource_name("requests.nvidia.com/gpu")
    assert k8s.is_extended_resource_name("nvidia.com/" + "g" * 64)
    assert k8s.is_extended_resource_name("a" * 245 + "/gpu")  # requests.<domain> over 253
    assert k8s.is_extended_resource_name("a" * 244 + "/gpu") == []


# -- the CRD says the same as the Python rules


def _fullmatch(pattern: str, value: str) -> bool:
    return re.fullmatch(pattern.removeprefix("^").removesuffix("$"), value) is not None


_CEL = celpy.Environment()


def _cel(rule: str, value: str) -> bool:
    return bool(_CEL.program(_CEL.compile(rule)).evaluate({"self": celpy.json_to_cel(value)}))


@pytest.mark.parametrize("value", LABEL_KEYS_GOOD + LABEL_KEYS_BAD)
def test_crd_label_key_rule_agrees(value):
    in_crd = _fullmatch(k8s.QUALIFIED_NAME_PATTERN, value) and _fullmatch(k8s.QUALIFIED_NAME_LENGTHS, value)
    assert in_crd == (k8s.is_qualified_name(value) == [])


def test_crd_label_value_dns_and_quantity_patterns_agree():
    for value in LABEL_VALUES_GOOD + LABEL_VALUES_BAD:
        in_crd = _fullmatch(k8s.LABEL_VALUE_PATTERN, value) and len(value) <= k8s.LABEL_VALUE_MAX_LENGTH
        assert in_crd == (k8s.is_label_value(value) == []), value
    for value in SUBDOMAINS_GOOD + SUBDOMAINS_BAD:
        in_crd = _fullmatch(k8s.DNS1123_SUBDOMAIN_PATTERN, value) and len(value) <= k8s.DNS1123_SUBDOMAIN_MAX_LENGTH
        assert in_crd == (k8s.is_dns1123_subdomain(value) == []), value
    for value in DNS1035_GOOD + DNS1035_BAD:
        in_crd = _fullmatch(k8s.DNS1035_LABEL_PATTERN, value) and len(value) <= k8s.DNS1035_LABEL_MAX_LENGTH
        assert in_crd == (k8s.is_dns1035_label(value) == []), value
    for value in QUANTITIES_GOOD + QUANTITIES_BAD:
        assert _fullmatch(k8s.QUANTITY_PATTERN, value) == (value in QUANTITIES_GOOD), value


@pytest.mark.parametrize(
    "value",
    ["nvidia.com/gpu", "gpu", "kubernetes.io/gpu", "x.kubernetes.io/gpu", "requests.nvidia.com/gpu",
     "nvidia.com/" + "g" * 64, "a" * 245 + "/gpu", "a" * 244 + "/gpu", "nvidia.com/gpu/x", "Nvidia.com/gpu"],
)  # fmt: skip
def test_crd_extended_resource_name_rule_agrees(value):
    in_crd = _fullmatch(k8s.EXTENDED_RESOURCE_NAME_PATTERN, value) and _cel(k8s.EXTENDED_RESOURCE_NAME_CEL, value)
    assert in_crd == (k8s.is_extended_resource_name(value) == [])


# -- tolerations: every combination kubernetes' ValidateTolerations distinguishes


TOLERATIONS = [
    {}, {"operator": "Exists"}, {"key": "gpu"}, {"key": "gpu", "value": "a100"}, {"key": "gpu", "operator": "Exists"},
    {"key": "gpu", "operator": "Exists", "value": "a100"}, {"operator": "Exists", "value": "x"},
    {"key": "gpu", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30},
    {"key": "gpu", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 30},
    {"key": "gpu", "operator": "Exists", "tolerationSeconds": 30}, {"key": "nvidia.com/gpu", "effect": "NoSchedule"},
    {"key": "gpu type", "operator": "Exists"}, {"key": "gpu", "value": "a 100"},
]  # fmt: skip


@pytest.mark.parametrize("toleration", TOLERATIONS, ids=[str(t) for t in TOLERATIONS])
def test_tolerations_kubetune_validate_and_the_crd_agree_with_kubernetes(toleration):
    expected = k8s.toleration_errors(
        key=toleration.get("key", ""),
        operator=toleration.get("operator", "Equal"),
        value=toleration.get("value", ""),
        effect=toleration.get("effect", ""),
        has_seconds="tolerationSeconds" in toleration,
    )
    doc = base()
    doc["spec"]["resources"] = {"tolerations": [toleration]}
    _, problems = check_manifest(doc)
    prefix = "spec.resources.tolerations[0]."
    assert sorted({p.path.removeprefix(prefix) for p in problems}) == sorted(expected), [str(p) for p in problems]
    assert bool(crdcheck.api_server_errors(doc)) == bool(expected)


def test_the_operator_refuses_a_multi_node_job_whose_service_name_would_be_invalid():
    spec = dict(base()["spec"], nodes=2)
    assert parse_spec(spec, name="lora-7b").nodes == 2
    with pytest.raises(SpecError) as err:
        parse_spec(spec, name="7b-lora")
    assert [p.path for p in err.value.problems] == ["metadata.name"]
    assert parse_spec(dict(spec, nodes=1), name="7b-lora").nodes == 1  # one node: no Service, any DNS label


# -- pod options: environment names, annotations, selector requirements, mount paths, reserved keys

# IsEnvVarName's regex and hasChDirPrefix (whose cases are TestIsConfigMapKey's '.', '..', '..bad')
ENV_NAMES_GOOD = ["abc", "ABC", "AbC_123", "a.b.c", "a-b-c", ".so.is.this", "_", "-", "a..b", "my.env-name"]
ENV_NAMES_BAD = ["", "1abc", "a!", "a b", "a=b", ".", "..", "..bad", "é", "a\n"]


def test_environment_variable_names():
    for value in ENV_NAMES_GOOD:
        assert k8s.is_env_var_name(value) == [], value
    for value in ENV_NAMES_BAD:
        assert k8s.is_env_var_name(value), value
    for value in ENV_NAMES_GOOD + ENV_NAMES_BAD:  # the CRD's one pattern says the same
        assert _fullmatch(k8s.ENV_VAR_NAME_PATTERN, value) == (k8s.is_env_var_name(value) == []), value


def test_annotations_as_kubernetes_counts_them():
    assert k8s.annotations_errors({"Example.com/Note": "x", "safe-to-evict": "false"}) == []
    assert k8s.annotations_errors({"Example_com/x": "1"})  # the prefix is still a DNS subdomain, in any case
    limit = k8s.TOTAL_ANNOTATION_SIZE_LIMIT
    assert k8s.annotations_errors({"a": "x" * (limit - 1)}) == []
    (problem,) = k8s.annotations_errors({"a": "x" * limit})
    assert problem == f"annotations size {limit + 1} is larger than limit {limit}"


def test_the_crd_bounds_keep_ascii_pod_annotations_under_the_api_servers_total():
    """The CRD cannot sum over a map; its bounds keep ASCII annotations under the 256 KiB total, with room for
    Kueue's and the operator's. Only many multi-byte characters go past it: `kubetune validate` and the operator
    count bytes (tests.api.manifests, pod-annotations-too-large)."""
    annotations = crdcheck.schema()["properties"]["spec"]["properties"]["pod"]["properties"]["annotations"]
    most = annotations["maxProperties"] * (
        k8s.QUALIFIED_NAME_MAX_LENGTH + annotations["additionalProperties"]["maxLength"]
    )
    assert most <= k8s.TOTAL_ANNOTATION_SIZE_LIMIT * 0.6


@pytest.mark.parametrize("node", [True, False], ids=["node", "pod"])
def test_selector_requirements_kubetune_validate_and_the_crd_agree(node):
    from kubetune.api.v1alpha1 import LabelSelectorRequirement, NodeSelectorRequirement

    model = NodeSelectorRequirement if node else LabelSelectorRequirement
    operators = ("In", "NotIn", "Exists", "DoesNotExist") + (("Gt", "Lt") if node else ())
    value_lists = [None, [], ["a"], ["1"], ["1", "2"]] + ([["-7"], ["1.5"]] if node else [])
    rules = model.model_json_schema()["x-kubernetes-validations"]
    checked = 0
    for operator in operators:
        for values in value_lists:
            requirement = {"key": "gpu", "operator": operator} | ({} if values is None else {"values": values})
            expected = bool(k8s.selector_requirement_errors(operator, values or [], node=node)) or (
                operator in ("Gt", "Lt") and not re.fullmatch("-?[0-9]+", values[0])
            )
            try:
                model.model_validate(requirement)
                refused = False
            except ValueError:
                refused = True
            assert refused == expected, requirement
            assert bool(crdcheck.cel_errors({"x-kubernetes-validations": rules}, requirement)) == expected, requirement
            checked += 1
    assert checked == len(operators) * len(value_lists)


MOUNT_PATHS = [
    ("/data", True), ("/data/sub", True), ("/srv/.cache", True), ("/srv/...", True), ("/opt/a b", True),
    ("data", False), ("/", False), ("/data/", False), ("//data", False), ("/a/./b", False), ("/a/../b", False),
    ("/..", False), ("/a:b", False), ("", False),
]  # fmt: skip


def test_mount_paths_and_their_pattern_agree():
    for path, good in MOUNT_PATHS:
        assert (k8s.mount_path_errors(path) == [] if path else False) == good, path
        assert _fullmatch(k8s.MOUNT_PATH_PATTERN, path) == good, path


@pytest.mark.parametrize(
    "path",
    ["/data", "/scratch", "/scratch/hf", "/scratchpad", "/etc", "/etc/kubetune", "/etc/kubetune2", "/dev",
     "/dev/shm/x", "/dev/termination-log", "/var/run", "/var/run/secrets/kubernetes.io", "/var/lib", "/etc/ca"],
)  # fmt: skip
def test_mounts_over_the_trainers_own_paths_python_and_cel_agree(path):
    from kubetune.api.constants import TRAINER_PATHS
    from kubetune.api.v1alpha1 import Volume

    clashes = any(k8s.path_overlaps(path, own) for own in TRAINER_PATHS)
    mount_path = Volume.model_json_schema()["properties"]["mountPath"]
    assert bool(crdcheck.cel_errors(mount_path, path)) == clashes
    assert clashes == (path in {"/scratch", "/scratch/hf", "/etc", "/etc/kubetune", "/dev", "/dev/shm/x",
                                "/dev/termination-log", "/var/run", "/var/run/secrets/kubernetes.io"})  # fmt: skip


@pytest.mark.parametrize(
    "key",
    ["kubetune.dev/x", "x.kubetune.dev/y", "KubeTune.Dev/x", "kubetune.dev.example.com/x", "notkubetune.dev/x",
     "kueue.x-k8s.io/queue-name", "batch.kubernetes.io/job-name", "job-name", "controller-uid", "team/job-name",
     "app.kubernetes.io/managed-by", "app.kubernetes.io/name", "kubetune.dev", "example.com/kubetune.dev"],
)  # fmt: skip
def test_reserved_label_keys_python_and_cel_agree(key):
    from kubetune.api.v1alpha1 import Pod, _reserved_key

    annotations = Pod.model_json_schema()["properties"]["annotations"]  # the label rules less the key's case
    reserved = _reserved_key(key)
    assert bool(crdcheck.cel_errors(annotations, {key: "v"})) == reserved
    assert reserved == (key in {"kubetune.dev/x", "x.kubetune.dev/y", "KubeTune.Dev/x", "kueue.x-k8s.io/queue-name",
                                "batch.kubernetes.io/job-name", "job-name", "controller-uid",
                                "app.kubernetes.io/managed-by"})  # fmt: skip
