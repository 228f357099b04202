"""Every string literal in the CRD's CEL rules is one cel-go can read. cel-go (the API server's CEL) refuses
an escape sequence it does not know, `'\\.'` in a regular expression for one, and the API server then refuses
the whole CRD ("compilation failed"); cel-python, which the other tests evaluate the rules with, reads `\\.`
as `\\.` and would not notice.

Ported from github.com/google/cel-go: parser/unescape.go (unescape, unescapeChar) and the STRING token of
parser/gen/CEL.g4 (quotes, triple quotes, the r/R raw prefix)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from kubetune.api import k8s_validation as k8s
from tests.api.crdcheck import crd

REPO = Path(__file__).resolve().parents[2]


class UnescapeError(ValueError):
    pass


def _unescape_char(s: str) -> tuple[str, str]:
    """unescape.go unescapeChar: (the character, the rest)."""
    if s[0] != "\\":
        return s[0], s[1:]
    if len(s) <= 1:
        raise UnescapeError("found '\\' as last character")
    c, s = s[1], s[2:]
    simple = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", "'": "'",
              '"': '"', "`": "`", "?": "?"}  # fmt: skip
    if c in simple:
        return simple[c], s
    if c in "xXuU":
        n = {"x": 2, "X": 2, "u": 4, "U": 8}[c]
        digits = s[:n]
        if len(digits) < n or any(d not in "0123456789abcdefABCDEF" for d in digits):
            raise UnescapeError("unable to unescape string")
        value = int(digits, 16)
        if value > 0x10FFFF:
            raise UnescapeError("unable to unescape string")
        return chr(value), s[n:]
    if c in "0123":
        digits = s[:2]
        if len(digits) < 2 or any(d not in "01234567" for d in digits):
            raise UnescapeError("unable to unescape octal sequence in string")
        return chr(int(c + digits, 8)), s[2:]
    raise UnescapeError(f"unable to unescape string (unknown escape \\{c})")


def unescape(literal: str) -> str:
    """unescape.go unescape: a quoted CEL string literal (with its quotes and optional r/R prefix) -> its value."""
    raw = literal[0] in "rR"
    if raw:
        literal = literal[1:]
    for quote in ("'''", '"""', "'", '"'):
        if literal.startswith(quote) and literal.endswith(quote) and len(literal) >= 2 * len(quote):
            body = literal[len(quote) : -len(quote)]
            break
    else:
        raise UnescapeError("unable to unescape string")
    if raw or "\\" not in body:
        return body
    out = []
    while body:
        char, body = _unescape_char(body)
        out.append(char)
    return "".join(out)


def string_literals(expression: str) -> list[str]:
    """The string literals of a CEL expression, quotes and prefix included (CEL.g4 STRING; bytes alike)."""
    found, i = [], 0
    while i < len(expression):
        start = i
        if expression[i] in "rRbB" and i + 1 < len(expression) and expression[i + 1] in "'\"" and (
            i == 0 or not (expression[i - 1].isalnum() or expression[i - 1] == "_")
        ):  # fmt: skip
            i += 1
        if expression[i] not in "'\"":
            i = start + 1
            continue
        raw = expression[start] in "rR"
        quote = expression[i : i + 3] if expression[i : i + 3] in ("'''", '"""') else expression[i]
        i += len(quote)
        while not expression.startswith(quote, i):
            if i >= len(expression):
                raise UnescapeError(f"unterminated string in {expression!r}")
            i += 2 if expression[i] == "\\" and not raw else 1
        i += len(quote)
        literal = expression[start:i]
        found.append(literal[1:] if literal[0] in "bB" else literal)
    return found


def _rules(node: object):
    if isinstance(node, dict):
        for rule in node.get("x-kubernetes-validations", []):
            yield rule["rule"]
        for value in node.values():
            yield from _rules(value)
    elif isinstance(node, list):
        for value in node:
            yield from _rules(value)


def _unreadable(document: dict) -> list[str]:
    problems = []
    for rule in _rules(document):
        for literal in string_literals(rule):
            try:
                unescape(literal)
            except UnescapeError as err:
                problems.append(f"{literal}: {err}")
    return problems


def test_the_port_reads_what_cel_go_reads():
    assert unescape(r"'a\\.b'") == r"a\.b"
    assert unescape(r"'it\'s'") == "it's"
    assert unescape(r"r'^a\.b$'") == r"^a\.b$"
    assert unescape(r"'\x41\u00e9\101'") == "Aé" + "A"
    assert unescape('"""a"b"""') == 'a"b'
    for bad in (r"'^a\.b$'", r"'\d'", r"'\x4'", r"'\8'", "'a\\'"):
        with pytest.raises(UnescapeError):
            unescape(bad)
    expression = "self.matches('^a\\\\.b$') && 'x' in [\"y\", r'\\d'] && '''it's''' != ''"
    assert string_literals(expression) == [r"'^a\\.b$'", "'x'", '"y"', r"r'\d'", "'''it's'''", "''"]


def test_cel_string_quotes_any_text_for_cel_go():
    for text in (k8s.QUALIFIED_NAME_PATTERN, k8s.MOUNT_PATH_PATTERN, "it's", "back\\slash", r"(?i)^([^/]*\.)?x/"):
        assert unescape(k8s.cel_string(text)) == text


def test_every_string_in_the_crds_rules_is_one_cel_go_reads():
    rules = list(_rules(crd()))
    assert len(rules) >= 40 and any("\\\\" in rule for rule in rules)  # there are escaped regular expressions
    assert _unreadable(crd()) == []


def test_the_crd_before_the_fix_had_a_rule_the_api_server_refuses():
    """The nodeSelector key rule carried the label-key regex with a bare `\\.` (commit 9c39621)."""
    try:
        old = subprocess.run(
            ["git", "show", "9c39621:crds/finetunejobs.kubetune.dev.yaml"],
            cwd=REPO, capture_output=True, text=True, check=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"commit 9c39621 is not in this checkout (shallow clone?): {err}")
    problems = _unreadable(yaml.safe_load(old.stdout))
    assert problems and all("unknown escape \\." in p for p in problems), problems
