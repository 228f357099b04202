"""The docs name only what exists: every `kubetune` command and flag they show is in the CLI's parser, every
KUBETUNE_* variable is one the code reads or sets (and docs/operator.md's settings table lists exactly the settings
controller/config.py reads), every status reason they name is a Reason of kubetune.api.constants, and every Helm
value they tell to set is in charts/kubetune/values.yaml.

What counts as "named" is found by the forms the docs use: shell lines and inline code that start with `kubetune`
or `kubectl ftj`; `Phase` / `Reason` pairs, `Type=True `Reason``, "reason `X`", "Event `X`"; `--set` keys, "chart
value `x`" and backquoted dotted names that start with a top-level value. Each extractor has a test that it finds
what it should, so a change of wording cannot make this test vacuous."""

from __future__ import annotations

import argparse
import ast
import re
import shlex
from pathlib import Path

import yaml

from kubetune.api.constants import CREDENTIAL_KEYS, Reason
from kubetune.api.crd import crd
from kubetune.api.credentials import (
    ROLE_MLFLOW,
    ROLE_MODEL,
    ROLE_OUTPUT,
    ROLE_REWARD_MODEL,
    ROLE_WANDB,
    dataset_role,
    env_name,
    eval_dataset_role,
)
from kubetune.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
VALUES = yaml.safe_load((REPO / "charts" / "kubetune" / "values.yaml").read_text())
CONFIG = REPO / "operator" / "kubetune" / "controller" / "config.py"
# The code's own modules; the test cluster (kubetune.testing) is what the tests run against, not what the code reads.
TEST_CLUSTER = REPO / "operator" / "kubetune" / "testing"
SOURCES = [
    p for top in ("operator", "trainer") for p in (REPO / top).rglob("*.py") if not p.is_relative_to(TEST_CLUSTER)
]


def text_of(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def code_chunks(text: str) -> list[str]:
    """Every line of a fenced code block and every inline code span, with markdown's table escapes undone."""
    chunks, fenced = [], False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            chunks.append(line)
        else:
            chunks += re.findall(r"`([^`\n]+)`", line.replace("\\|", "|"))
    return chunks


# ------------------------------------------------------------------------------------------- commands and flags

COMMAND_START = re.compile(r"^(?:\$\s+)?(?:\S*/)?(?P<prog>kubetune|kubectl ftj)\s+(?P<rest>.*)$")


def commands_in(chunk: str) -> list[tuple[str, list[str], list[str]]]:
    """(program, its subcommands (one, or alternatives a|b), the flags given) of each command in a shell chunk."""
    chunk = re.sub(r"(^|\s)#.*$", "", chunk.replace("\\|", "|"))  # a comment
    found = []
    for segment in re.split(r"\s(?:&&|\|\||;|\|)\s|\$\(", chunk):
        match = COMMAND_START.match(segment.strip())
        if match is None:
            continue
        try:
            words = shlex.split(match["rest"])
        except ValueError:
            words = match["rest"].split()
        if not words:
            continue
        first = words[0].strip("[]():,")
        if not re.fullmatch(r"[a-z]+(\|[a-z]+)*", first):
            continue  # prose, e.g. "kubetune: error: ..."
        flags = [w.strip("[](),.").split("=")[0] for w in words[1:] if re.match(r"^\[?--?[A-Za-z]", w)]
        found.append((match["prog"], first.split("|"), flags))
    return found


def subcommands(prog: str) -> dict[str, argparse.ArgumentParser]:
    if prog == "kubectl ftj":
        from kubetune.usercli.commands import add_user_commands

        parser = argparse.ArgumentParser(prog="kubectl ftj")
        add_user_commands(parser.add_subparsers(dest="command"), "kubectl ftj")
    else:
        parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def documented_commands() -> list[tuple[str, str, list[str], list[str]]]:
    return [
        (doc.name, prog, names, flags)
        for doc in DOCS
        for chunk in code_chunks(text_of(doc))
        for prog, names, flags in commands_in(chunk)
    ]


def test_the_command_extractor():
    assert commands_in("kubetune doctor support-bot.yaml -n team-a   # what is missing") == [
        ("kubetune", ["doctor"], ["-n"])
    ]
    assert commands_in(".venv/bin/kubetune validate a.yaml && kubectl apply -f a.yaml") == [
        ("kubetune", ["validate"], [])
    ]
    assert commands_in("kubetune status\\|logs\\|metrics") == [("kubetune", ["status", "logs", "metrics"], [])]
    assert commands_in("kubectl ftj status support-bot -n team-a") == [("kubectl ftj", ["status"], ["-n"])]
    assert commands_in("kubetune run FILE [--output URI]") == [("kubetune", ["run"], ["--output"])]
    assert commands_in("helm install kubetune charts/kubetune -n kubetune-system") == []
    assert commands_in("kubetune: error: no FineTuneJob") == []
    found = {(prog, name) for _, prog, names, _ in documented_commands() for name in names}
    assert {
        ("kubetune", "doctor"),
        ("kubetune", "validate"),
        ("kubetune", "status"),
        ("kubectl ftj", "status"),
    } <= found


def test_every_documented_command_and_flag_exists():
    wrong = []
    for doc, prog, names, flags in documented_commands():
        parsers = subcommands(prog)
        for name in names:
            if name not in parsers:
                wrong.append(f"{doc}: `{prog} {name}`: no such command")
                continue
            options = parsers[name]._option_string_actions
            wrong += [f"{doc}: `{prog} {name} {flag}`: no such flag" for flag in flags if flag not in options]
    assert wrong == []


# ------------------------------------------------------------------------------------------- KUBETUNE_* settings


def config_settings() -> set[str]:
    """The variables controller/config.py reads: its string constants that start with KUBETUNE_."""
    tree = ast.parse(CONFIG.read_text())
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.fullmatch(r"KUBETUNE_[A-Z0-9_]+", node.value)
    }


def credential_variables() -> set[str]:
    """KUBETUNE_<ROLE>_<KEY>, as credentials.env_name spells them (credentials.lookup reads them) for every role the
    code names (a module constant ROLE_* or *_ROLE, and the datasets') and every key it looks up."""
    roles = {ROLE_MODEL, ROLE_OUTPUT, ROLE_REWARD_MODEL, ROLE_MLFLOW, ROLE_WANDB}
    roles |= {role(i) for i in range(16) for role in (dataset_role, eval_dataset_role)}
    keys = set(CREDENTIAL_KEYS)
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        roles |= set(re.findall(r"^(?:ROLE_[A-Z_]+|[A-Z_]+_ROLE) = \"([a-z-]+)\"", text, flags=re.MULTILINE))
        keys |= set(re.findall(r"\blookup\([^,()]+, \"([A-Z_]+)\"", text))
    return {env_name(role, key) for role in roles for key in keys}


def test_every_kubetune_variable_named_exists():
    in_code = set()
    for path in SOURCES:
        in_code |= set(re.findall(r"KUBETUNE_[A-Z0-9_]*[A-Z0-9]", path.read_text(encoding="utf-8")))
    known = in_code | credential_variables()
    wrong = [
        f"{doc.name}: {name}"
        for doc in DOCS
        for name in sorted(set(re.findall(r"KUBETUNE_[A-Z0-9_]*[A-Z0-9](?![A-Za-z0-9_<])", text_of(doc))))
        if name not in known
    ]
    assert wrong == []


def test_operator_md_lists_every_setting_of_the_operator():
    text = text_of(REPO / "docs" / "operator.md")
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(KUBETUNE_[A-Z0-9_]+)` \|", section, flags=re.MULTILINE))
    assert config_settings() and listed == config_settings(), (
        f"missing from docs/operator.md: {sorted(config_settings() - listed)}; "
        f"not read by config.py: {sorted(listed - config_settings())}"
    )


# ------------------------------------------------------------------------------------------- status reasons

PHASES = "Pending|Queued|Running|Succeeded|Failed|Suspended"


def reasons_in(text: str) -> set[str]:
    text = text.replace("\\|", "|")
    found = set(re.findall(rf"`(?:{PHASES})` / `([A-Za-z]+)`", text))
    for listed in re.findall(r"=(?:True|False) ((?:`[A-Za-z<>]+`(?: / )?)+)", text):
        found |= set(re.findall(r"`([A-Za-z]+)`", listed))
    found |= set(re.findall(r"\breasons? `([A-Za-z]+)`", text))
    found |= set(re.findall(r"\bEvent `([A-Za-z]+)`", text))
    for listed in re.findall(r"\breasons? \(([^)]*)\)", text) + re.findall(r"Event reasons are ([^.]*)\.", text):
        found |= set(re.findall(r"`([A-Za-z]+)`", listed))
    return found


def test_the_reason_extractor():
    assert reasons_in(
        "| `Failed` / `UserError` | ... Running=False `PodsPending` / `Retrying`; Event `JobMissing`; "
        "reason `QueueNotFound`; the failure reason (`SpecInvalid`, `DoesNotFit`)"
    ) == {"UserError", "PodsPending", "Retrying", "JobMissing", "QueueNotFound", "SpecInvalid", "DoesNotFit"}
    everywhere = set().union(*(reasons_in(text_of(doc)) for doc in DOCS))
    assert {"BackoffLimitExceeded", "WaitingForAdmission", "TrainingComplete", "SecretNotFound"} <= everywhere


def test_every_status_reason_named_exists():
    known = {reason.value for reason in Reason}
    wrong = [
        f"{doc.name}: {reason}" for doc in DOCS for reason in sorted(reasons_in(text_of(doc))) if reason not in known
    ]
    assert wrong == []


# ------------------------------------------------------------------------------------------- Helm values


def value_paths(values: dict, prefix: str = "") -> set[str]:
    paths = set()
    for key, value in values.items():
        path = f"{prefix}{key}"
        paths.add(path)
        if isinstance(value, dict):
            paths |= value_paths(value, path + ".")
    return paths


def crd_paths() -> set[str]:
    """Dotted paths of the FineTuneJob's fields below spec and status (lists seen through), as docs write them; a
    map's entries as `<map>.*`."""
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    paths: set[str] = set()

    def walk(node: dict, prefix: str) -> None:
        node = node.get("items", node)
        if isinstance(node.get("additionalProperties"), dict):
            paths.add(prefix + "*")
        for name, child in (node.get("properties") or {}).items():
            paths.add(prefix + name)
            walk(child, prefix + name + ".")

    walk(schema["spec"], "")
    walk(schema["status"], "")
    return paths


def free_maps(values: dict, prefix: str = "") -> set[str]:
    """Values that are maps of the user's own keys (`podAnnotations: {}`, `labels: {}`), as `<path>.*`."""
    maps = set()
    for key, value in values.items():
        if isinstance(value, dict):
            maps |= {f"{prefix}{key}.*"} if not value else free_maps(value, f"{prefix}{key}.")
    return maps


def named_by(path: str, paths: set[str]) -> bool:
    parts = path.split(".")
    return path in paths or any(".".join(parts[:i]) + ".*" in paths for i in range(1, len(parts)))


HELM_CONTEXT = re.compile(r"(?:chart values?|chart's|values') `([A-Za-z][A-Za-z.]*)(?::[^`]*)?`")


def helm_values_in(text: str) -> set[str]:
    """Value paths a doc tells to set: --set keys, "chart value `x`", dotted names under a top-level value, and the
    chart-value column of docs/operator.md's settings table."""
    found = set()
    for expression in re.findall(r"--set '?([^' \n`]+)'?", text):
        for assignment in re.findall(r"(?:[^,{]|\{[^}]*\})+", expression):
            found.add(assignment.partition("=")[0])
    found |= set(HELM_CONTEXT.findall(text))
    for token in re.findall(r"`([a-z][A-Za-z]*(?:\.[A-Za-z]+)+)`", text):
        if token.split(".")[0] in VALUES and not re.search(r"\.(jsonl?|py|ya?ml|md|png|lua|txt)$", token):
            found.add(token)
    # The platform's policy: its rules by their names in the values' `policy:`.
    found |= {f"policy.{rule}" for rule in re.findall(r"\(policy rule `?([a-zA-Z]+)`?\)", text)}
    for table in re.findall(r"^\| rule \| refuses \| default \|\n\|[-|]+\|\n((?:\|.*\n)+)", text, flags=re.MULTILINE):
        found |= {f"policy.{rule}" for rule in re.findall(r"^\| `([a-zA-Z]+)` \|", table, flags=re.MULTILINE)}
    settings = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0] if "\n## Settings\n" in text else ""
    for cell in re.findall(r"^\| `KUBETUNE_[A-Z_]+` \| ([^|]*) \|", settings, flags=re.MULTILINE):
        found |= {m.split(":")[0] for m in re.findall(r"`([^`]+)`", cell) if not m.startswith("-")}
    return found


def test_the_helm_value_extractor():
    assert helm_values_in(
        "--set image.repository=x --set 'watchNamespaces={a,b}', the chart value "
        "`maxRunningPerNamespace: N`, `trainer.graceSeconds`, `resources.gpus`, `spec.image`"
    ) == {"image.repository", "watchNamespaces", "maxRunningPerNamespace", "trainer.graceSeconds", "resources.gpus"}
    everywhere = set().union(*(helm_values_in(text_of(doc)) for doc in DOCS))
    assert {
        "trainer.defaultOutputUri",
        "watchNamespaces",
        "extraArgs",
        "policy.allowAmbientCredentials",
        "policy.outputUriPrefix",
        "policy.maxGpusPerJob",
    } <= everywhere


def test_every_helm_value_named_exists():
    # A dotted name may also be a FineTuneJob's field (`resources.gpus`, `metrics.loss` of the status).
    known = value_paths(VALUES) | free_maps(VALUES) | crd_paths()
    wrong = [
        f"{doc.name}: {path}"
        for doc in DOCS
        for path in sorted(helm_values_in(text_of(doc)))
        if not named_by(path, known)
    ]
    assert wrong == []
    assert not named_by("trainer.defaultOutputURI", known) and named_by("podAnnotations.team", known)
