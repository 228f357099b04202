"""The `kubetune` command: validate, crd, run, operator, doctor, and the user's commands (kubetune.usercli).

Heavy imports (torch for `run`, kopf for `operator`) happen only inside their subcommands, so
`kubetune validate` stays fast and works with the base install.
"""

from __future__ import annotations

import argparse
import sys


def _cmd_validate(args: argparse.Namespace) -> int:
    """One line per problem (`FILE: <name>: <path>: <message>`), then one per setting of a valid document that
    will not take effect (`FILE: <name>: warning: <path>: <message>`); warnings alone still exit 0."""
    from kubetune.api.validation import notices
    from kubetune.manifests import ManifestFileError, check_file

    problems: list[str] = []
    warnings: list[str] = []
    for path in args.files:
        try:
            checked = check_file(path)
        except ManifestFileError as err:
            problems.append(f"{path}: {err}")
            continue
        for doc in checked:
            problems.extend(f"{path}: {doc.name}: {problem}" for problem in doc.problems)
            if doc.job is not None:
                warnings.extend(f"{path}: {doc.name}: warning: {notice}" for notice in notices(doc.job.spec))
    for line in problems + warnings:
        print(line)
    if not problems and not args.quiet:
        print(f"{len(args.files)} file(s) valid")
    return 1 if problems else 0


def _cmd_crd(args: argparse.Namespace) -> int:
    from kubetune.api.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kubetune import generate

    root = Path(args.root)
    if args.check:
        stale = generate.stale(root)
        for path in stale:
            print(f"{path}: stale; run `kubetune generate`")
        return 1 if stale else 0
    for path in generate.write(root):
        print(f"wrote {path}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from kubetune_trainer.entrypoint import run_cli

    return run_cli(args)


def _cmd_plan(args: argparse.Namespace) -> int:
    from kubetune_trainer.plan_cli import run_plan

    return run_plan(args)


def _cmd_operator(args: argparse.Namespace) -> int:
    from kubetune.controller.main import run_operator

    return run_operator(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubetune", description="Declarative LLM fine-tuning on Kubernetes.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check FineTuneJob manifests (multi-document YAML)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing when all are valid")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("crd", help="print the FineTuneJob CustomResourceDefinition")
    p.set_defaults(func=_cmd_crd)

    p = sub.add_parser("generate", help="regenerate the checked-in CRD and chart RBAC files (developers)")
    p.add_argument("--root", default=".", help="repository root")
    p.add_argument("--check", action="store_true", help="only report stale files (exit 1 if any)")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("run", help="run a FineTuneJob on this machine (the same entrypoint a training pod runs)")
    p.add_argument("file", metavar="FILE", help="FineTuneJob manifest (or a bare spec)")
    p.add_argument("--output", metavar="URI", help="override spec.output.uri (s3://... or file:///...)")
    p.add_argument("--name", help="which document of a multi-document FILE to run (default: the only one)")
    p.add_argument(
        "--termination-log",
        metavar="PATH",
        default=None,
        help="where to write the one-line failure reason "
        "(default: $KUBETUNE_TERMINATION_LOG, else /dev/termination-log in a pod)",
    )
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("plan", help="the memory plan per GPU for each strategy: does the job fit its GPUs?")
    p.add_argument("file", metavar="FILE", help="FineTuneJob manifest")
    p.add_argument("--name", help="which document of a multi-document FILE (default: the only one)")
    p.add_argument("--gpus", type=int, default=None, help="GPUs per node (default: spec.resources.gpus)")
    p.add_argument("--nodes", type=int, default=None, help="nodes (default: spec.nodes)")
    p.add_argument(
        "--gpu-memory",
        default=None,
        metavar="QUANTITY",
        help="memory of one GPU, e.g. 80Gi (default: spec.resources.gpuMemory; without it, no verdict)",
    )
    p.add_argument(
        "--config",
        default=None,
        metavar="PATH",
        help="the model's config.json to plan with, instead of fetching it from spec.model.uri",
    )
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("operator", help="run the operator (kopf) against the current cluster")
    p.add_argument(
        "--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable); default: all"
    )
    p.add_argument("--standalone", action="store_true", help="no leader election: this replica always reconciles")
    p.add_argument(
        "--leader-election",
        default=None,
        metavar="NAME",
        help="several replicas: reconcile only while holding the Lease NAME in the operator's namespace "
        "(env POD_NAMESPACE); default: no election",
    )
    p.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="liveness endpoint URL")
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus metrics port (0 = off; default 9090)")
    p.add_argument("--trainer-image", default=None, help="default trainer image (env KUBETUNE_TRAINER_IMAGE)")
    p.add_argument("--default-output-uri", default=None, help="output root when spec.output.uri is empty")
    p.add_argument(
        "--max-running-per-namespace",
        type=int,
        default=None,
        help="cap on running FineTuneJobs per namespace, for clusters without Kueue (0 = none)",
    )
    p.add_argument("--resync-seconds", type=float, default=None, help="reconcile every unfinished job this often")
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=None,
        help="log lines as text or one JSON object each (env KUBETUNE_LOG_FORMAT; default text)",
    )
    p.set_defaults(func=_cmd_operator)

    # status, logs, metrics, compare, download, dashboard: also the kubectl plugin `kubectl ftj`.
    from kubetune.usercli.commands import add_user_commands

    add_user_commands(sub, parser.prog)

    from kubetune.doctor import add_doctor_command

    add_doctor_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
