"""Kubernetes' own rules for the values a FineTuneJob hands to its child objects, so a spec that passes
here never makes a Job, Service or pod the API server refuses.

Ported from kubernetes (staging/src/k8s.io/...):
- apimachinery/pkg/util/validation/validation.go: IsDNS1123Label, IsDNS1123Subdomain, IsDNS1035Label,
  IsEnvVarName (with hasChDirPrefix);
- apimachinery/pkg/api/validate/content/kube.go: IsLabelKey (a "qualified name"), IsLabelValue;
- apimachinery/pkg/api/validation/objectmeta.go: ValidateAnnotations, ValidateAnnotationsSize;
- apimachinery/pkg/apis/meta/v1/validation/validation.go: ValidateLabelSelectorRequirement;
- apimachinery/pkg/api/resource/quantity.go: parseQuantityString and the suffixes ParseQuantity accepts;
- pkg/apis/core/helper/helpers.go: IsExtendedResourceName, IsNativeResource (for container resources);
- pkg/apis/core/validation/validation.go: ValidateTolerations, ValidateNodeSelectorRequirement,
  ValidateNodeFieldSelectorRequirement, validatePodAffinityTerm (namespaces, topologyKey, matchLabelKeys and
  mismatchLabelKeys), the 1-100 weights of preferred terms, and validateVolumes (a volume name is a DNS label).
Each function returns the problems as the API server words them; empty means valid. The regular
expressions are RE2-compatible so the CRD can carry them as patterns and CEL.
"""

from __future__ import annotations

import re
from decimal import Decimal

from kubernetes.utils import parse_quantity

DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_LABEL_MAX_LENGTH = 63
DNS1123_SUBDOMAIN_FMT = DNS1123_LABEL_FMT + r"(\." + DNS1123_LABEL_FMT + ")*"
DNS1123_SUBDOMAIN_MAX_LENGTH = 253
DNS1035_LABEL_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
DNS1035_LABEL_MAX_LENGTH = 63
LABEL_KEY_NAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
LABEL_KEY_NAME_MAX_LENGTH = 63
LABEL_VALUE_FMT = f"({LABEL_KEY_NAME_FMT})?"
LABEL_VALUE_MAX_LENGTH = 63

# Anchored forms, for schema patterns and CEL matches().
DNS1123_LABEL_PATTERN = f"^{DNS1123_LABEL_FMT}$"
DNS1123_SUBDOMAIN_PATTERN = f"^{DNS1123_SUBDOMAIN_FMT}$"
DNS1035_LABEL_PATTERN = f"^{DNS1035_LABEL_FMT}$"
LABEL_VALUE_PATTERN = f"^{LABEL_VALUE_FMT}$"
# a label key's shape; QUALIFIED_NAME_LENGTHS adds the length limits of its two parts
QUALIFIED_NAME_PATTERN = f"^({DNS1123_SUBDOMAIN_FMT}/)?{LABEL_KEY_NAME_FMT}$"
QUALIFIED_NAME_LENGTHS = "^([^/]{1,%d}/)?[^/]{1,%d}$" % (DNS1123_SUBDOMAIN_MAX_LENGTH, LABEL_KEY_NAME_MAX_LENGTH)
QUALIFIED_NAME_MAX_LENGTH = DNS1123_SUBDOMAIN_MAX_LENGTH + 1 + LABEL_KEY_NAME_MAX_LENGTH


def cel_string(text: str) -> str:
    """A CEL string literal for text: cel-go (parser/unescape.go) refuses an escape it does not know, such as
    the `\\.` of a regular expression, so every backslash and quote is escaped."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _max_len_error(length: int) -> str:
    return f"must be no more than {length} characters"


def _regex_error(message: str, fmt: str, *examples: str) -> str:
    """validation.go RegexError."""
    if not examples:
        return f"{message} (regex used for validation is '{fmt}')"
    return f"{message} (e.g. " + " or ".join(f"'{e}'" for e in examples) + f", regex used for validation is '{fmt}')"


_DNS1123_LABEL = re.compile(DNS1123_LABEL_PATTERN)
_DNS1123_SUBDOMAIN = re.compile(DNS1123_SUBDOMAIN_PATTERN)
_DNS1035_LABEL = re.compile(DNS1035_LABEL_PATTERN)
_LABEL_KEY_NAME = re.compile(f"^{LABEL_KEY_NAME_FMT}$")


def is_dns1123_label(value: str) -> list[str]:
    errors = []
    if len(value) > DNS1123_LABEL_MAX_LENGTH:
        errors.append(_max_len_error(DNS1123_LABEL_MAX_LENGTH))
    if not _DNS1123_LABEL.fullmatch(value):
        if _DNS1123_SUBDOMAIN.fullmatch(value):
            errors.append("must not contain dots")
        else:
            errors.append(_regex_error(
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
                "start and end with an alphanumeric character", DNS1123_LABEL_FMT, "my-name", "123-abc"))  # fmt: skip
    return errors


def is_dns1123_subdomain(value: str) -> list[str]:
    errors = []
    if len(value) > DNS1123_SUBDOMAIN_MAX_LENGTH:
        errors.append(_max_len_error(DNS1123_SUBDOMAIN_MAX_LENGTH))
    if not _DNS1123_SUBDOMAIN.fullmatch(value):
        errors.append(_regex_error(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
            "start and end with an alphanumeric character", DNS1123_SUBDOMAIN_FMT, "example.com"))  # fmt: skip
    return errors


def is_dns1035_label(value: str) -> list[str]:
    errors = []
    if len(value) > DNS1035_LABEL_MAX_LENGTH:
        errors.append(_max_len_error(DNS1035_LABEL_MAX_LENGTH))
    if not _DNS1035_LABEL.fullmatch(value):
        errors.append(_regex_error(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic "
            "character, and end with an alphanumeric character", DNS1035_LABEL_FMT, "my-name", "abc-123"))  # fmt: skip
    return errors


_LABEL_KEY_ERROR = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
)


def is_qualified_name(value: str) -> list[str]:
    """content/kube.go IsLabelKey: [DNS subdomain prefix '/'] name; label keys, taint keys."""
    errors = []
    prefix, slash, name = value.partition("/")
    if not slash:
        name = value
    elif "/" in name:
        example = _regex_error(_LABEL_KEY_ERROR, LABEL_KEY_NAME_FMT, "MyName", "my.name", "123-abc")
        return [
            f"a valid label key {example} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    elif not prefix:
        errors.append("prefix part must be non-empty")
    else:
        errors += [f"prefix part {e}" for e in is_dns1123_subdomain(prefix)]
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > LABEL_KEY_NAME_MAX_LENGTH:
        errors.append("name part " + _max_len_error(LABEL_KEY_NAME_MAX_LENGTH))
    if not _LABEL_KEY_NAME.fullmatch(name):
        errors.append("name part " + _regex_error(_LABEL_KEY_ERROR, LABEL_KEY_NAME_FMT, "MyName", "my.name", "123-abc"))
    return errors


def is_label_value(value: str) -> list[str]:
    errors = []
    if len(value) > LABEL_VALUE_MAX_LENGTH:
        errors.append(_max_len_error(LABEL_VALUE_MAX_LENGTH))
    if value and not _LABEL_KEY_NAME.fullmatch(value):
        message = (
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and "
            "must start and end with an alphanumeric character"
        )
        errors.append(_regex_error(message, LABEL_VALUE_FMT, "MyValue", "my_value", "12345"))
    return errors


# --------------------------------------------------------------------------- resources

# helpers.go: an unprefixed name, or one in kubernetes.io/, is a native resource; a container may request
# only cpu, memory, ephemeral-storage and hugepages-* of those. Quota names an extended resource
# "requests.<name>", which must then be a qualified name.
RESOURCE_DEFAULT_NAMESPACE_PREFIX = "kubernetes.io/"
DEFAULT_RESOURCE_REQUESTS_PREFIX = "requests."
EXTENDED_RESOURCE_NAME_PATTERN = f"^{DNS1123_SUBDOMAIN_FMT}/{LABEL_KEY_NAME_FMT}$"
_EXTENDED_DOMAIN_MAX_LENGTH = DNS1123_SUBDOMAIN_MAX_LENGTH - len(DEFAULT_RESOURCE_REQUESTS_PREFIX)
EXTENDED_RESOURCE_NAME_MAX_LENGTH = _EXTENDED_DOMAIN_MAX_LENGTH + 1 + LABEL_KEY_NAME_MAX_LENGTH
# the CEL half of the rule: the lengths of requests.<domain>/<name>, and no native or quota-like name
EXTENDED_RESOURCE_NAME_CEL = (
    "self.matches('^[^/]{1,%d}/[^/]{1,%d}$') && !self.contains('%s') && !self.startsWith('%s')"
    % (_EXTENDED_DOMAIN_MAX_LENGTH, LABEL_KEY_NAME_MAX_LENGTH,
       RESOURCE_DEFAULT_NAMESPACE_PREFIX, DEFAULT_RESOURCE_REQUESTS_PREFIX)
)  # fmt: skip


def is_native_resource(name: str) -> bool:
    return "/" not in name or RESOURCE_DEFAULT_NAMESPACE_PREFIX in name


def is_extended_resource_name(name: str) -> list[str]:
    """helpers.go IsExtendedResourceName, as a list of what is wrong."""
    if is_native_resource(name):
        return [
            "without a domain prefix (or in kubernetes.io/) it names a native resource, and a container may ask "
            "for no native resource but cpu, memory, ephemeral-storage and hugepages-<size>"
        ]
    if name.startswith(DEFAULT_RESOURCE_REQUESTS_PREFIX):
        return [f"must not start with {DEFAULT_RESOURCE_REQUESTS_PREFIX!r} (quota's prefix)"]
    return is_qualified_name(DEFAULT_RESOURCE_REQUESTS_PREFIX + name)


# quantity.go: a sign, digits with at most one '.', then a suffix: an SI or binary multiplier or an
# integer exponent (e3, E-2). 1e3.5 and 1K are refused; the Python client's parse_quantity alone accepts both.
# (an exponent of at most 9 digits: newer API servers refuse one past int32, older ones truncated it)
QUANTITY_PATTERN = r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][-+]?[0-9]{1,9})?$"
_QUANTITY = re.compile(QUANTITY_PATTERN)


def parse_positive_quantity(value: object) -> Decimal:
    """The amount of a Kubernetes resource quantity (an int or a string such as "8", "500m", "64Gi")."""
    example = 'a Kubernetes quantity such as "8", "500m" or "64Gi"'
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"must be {example} (got {value!r})")
    text = str(value)
    if text.startswith("-"):
        raise ValueError(f"must be a positive quantity (got {value!r})")
    if not _QUANTITY.fullmatch(text):
        raise ValueError(f"must be {example} (got {value!r})")
    amount = parse_quantity(text)
    if not amount > 0:
        raise ValueError(f"must be a positive quantity (got {value!r})")
    return amount


# --------------------------------------------------------------------------- tolerations


def toleration_errors(key: str, operator: str, value: str, effect: str, has_seconds: bool) -> dict[str, list[str]]:
    """validation.go ValidateTolerations for one toleration, keyed by the field to fix."""
    errors: dict[str, list[str]] = {}
    if key:
        errors.setdefault("key", []).extend(is_qualified_name(key))
    elif operator != "Exists":
        errors.setdefault("operator", []).append(
            'must be Exists when key is empty, which means "match all values and all keys"'
        )
    if has_seconds and effect != "NoExecute":
        errors.setdefault("tolerationSeconds", []).append("needs effect NoExecute (only NoExecute taints evict)")
    if operator == "Exists" and value:
        errors.setdefault("value", []).append("must be empty when operator is Exists")
    elif operator != "Exists":
        errors.setdefault("value", []).extend(is_label_value(value))
    return {field: problems for field, problems in errors.items() if problems}


# --------------------------------------------------------------------------- environment


ENV_VAR_NAME_FMT = "[-._a-zA-Z][-._a-zA-Z0-9]*"
# IsEnvVarName as one RE2 pattern: its regex without hasChDirPrefix's '.', '..' and '..'-prefixed names.
ENV_VAR_NAME_PATTERN = r"^(\.[-_a-zA-Z0-9][-._a-zA-Z0-9]*|[-_a-zA-Z][-._a-zA-Z0-9]*)$"
_ENV_VAR_NAME = re.compile(f"^{ENV_VAR_NAME_FMT}$")


def is_env_var_name(value: str) -> list[str]:
    """validation.go IsEnvVarName. (Kubernetes 1.32+ with RelaxedEnvironmentVariableValidation also takes any
    printable ASCII but '='; the strict form is what every supported API server accepts.)"""
    errors = []
    if not _ENV_VAR_NAME.fullmatch(value):
        errors.append(_regex_error(
            "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', "
            "and must not start with a digit",
            ENV_VAR_NAME_FMT, "my.env-name", "MY_ENV.NAME", "MyEnvName1"))  # fmt: skip
    if value == ".":
        errors.append("must not be '.'")
    elif value == "..":
        errors.append("must not be '..'")
    elif value.startswith(".."):
        errors.append("must not start with '..'")
    return errors


# --------------------------------------------------------------------------- annotations

TOTAL_ANNOTATION_SIZE_LIMIT = 256 * (1 << 10)  # objectmeta.go TotalAnnotationSizeLimitB, bytes of keys and values


def annotations_errors(annotations: dict[str, str]) -> list[str]:
    """objectmeta.go ValidateAnnotations: each key a qualified name (case does not matter), and keys and values
    together at most 256 KiB."""
    errors = []
    for key in annotations:
        problems = is_qualified_name(key.lower())
        if problems:
            errors.append(f"key {key!r} must be a qualified name ([DNS subdomain/]name): {'; '.join(problems)}")
    total = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
    if total > TOTAL_ANNOTATION_SIZE_LIMIT:
        errors.append(f"annotations size {total} is larger than limit {TOTAL_ANNOTATION_SIZE_LIMIT}")
    return errors


# --------------------------------------------------------------------------- selectors and affinity


def selector_requirement_errors(operator: str, values: list[str], node: bool) -> list[str]:
    """ValidateNodeSelectorRequirement (node: In, NotIn, Exists, DoesNotExist, Gt, Lt) and
    ValidateLabelSelectorRequirement (pods: the first four), for the values a requirement's operator needs."""
    if operator in ("In", "NotIn") and not values:
        return ["must be specified when `operator` is 'In' or 'NotIn'"]
    if operator in ("Exists", "DoesNotExist") and values:
        return ["may not be specified when `operator` is 'Exists' or 'DoesNotExist'"]
    if node and operator in ("Gt", "Lt") and len(values) != 1:
        return ["must be specified single value when `operator` is 'Lt' or 'Gt'"]
    return []


# --------------------------------------------------------------------------- volumes

# A mount path as the trainer container needs it: absolute (a relative one resolves against the image's working
# directory), in its one spelling (no '.' or '..' segment, no empty segment, no trailing '/'; so two spellings of
# one path cannot pass as two paths), and without ':' (the separator of the runtime's volume specifications).
MOUNT_PATH_SEGMENT = r"([^/:.][^/:]*|\.[^/:.][^/:]*|\.\.[^/:]+)"
MOUNT_PATH_PATTERN = rf"^(/{MOUNT_PATH_SEGMENT})+$"
_MOUNT_PATH = re.compile(MOUNT_PATH_PATTERN)


def mount_path_errors(path: str) -> list[str]:
    if path == "/":
        return ["must not be '/' (the container's root)"]
    if not path.startswith("/"):
        return ["must be an absolute path (starting with '/')"]
    if ":" in path:
        return ["must not contain ':'"]
    segments = path.split("/")[1:]
    if ".." in segments:
        return ["must not contain '..'"]
    if "." in segments or "" in segments:
        return ["must be written without '.' segments, '//' or a trailing '/'"]
    assert _MOUNT_PATH.fullmatch(path), path
    return []


def path_overlaps(path: str, other: str) -> bool:
    """The same path, or one inside the other (mounting at either hides or shadows the other)."""
    return path == other or path.startswith(other.rstrip("/") + "/") or other.startswith(path.rstrip("/") + "/")
