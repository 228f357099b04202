"""`kubetune status|logs|metrics|compare|download|retry|dashboard`, and the same commands as the kubectl plugin
`kubectl ftj ...` (the console script `kubectl-ftj`: kubectl runs any `kubectl-<name>` it finds on PATH).

Every command reads with the user's kubeconfig (`--kubeconfig`, `--context`, `-n`; the context's namespace by
default) and, for the output store, the user's own credentials. A failure is one line on stderr and exit
status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from kubetune.usercli import CliError

COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
POD_WATCH_SECONDS = 10  # while waiting for a retry's pod: how long one pod watch lasts before the job is read again


# ----------------------------------------------------------------------------------------- shared


def _cluster(args: argparse.Namespace):
    from kubetune.usercli.cluster import Cluster

    return Cluster(kubeconfig=args.kubeconfig, context=args.context, namespace=args.namespace)


def split_reference(reference: str, default_namespace: str) -> tuple[str, str]:
    """NAME or NAMESPACE/NAME."""
    namespace, _, name = reference.rpartition("/")
    if not name:
        raise CliError(f"{reference!r}: expected NAME or NAMESPACE/NAME")
    return namespace or default_namespace, name


def _fetch(cluster, reference: str) -> dict:
    namespace, name = split_reference(reference, cluster.namespace)
    return cluster.get_job(name, namespace)


# ----------------------------------------------------------------------------------------- status


def cmd_status(args: argparse.Namespace) -> int:
    from kubetune.usercli.summary import status_text, summarize

    ftj = _fetch(_cluster(args), args.name)
    if args.output == "json":
        print(json.dumps(summarize(ftj), indent=2))
    else:
        if not ftj.get("status"):
            raise CliError(
                f"{ftj['metadata']['namespace']}/{ftj['metadata']['name']} has no status yet: "
                "the operator has not seen it (is the kubetune operator running?)"
            )
        print(status_text(ftj))
    return 0


# ----------------------------------------------------------------------------------------- logs


def _started(pod: dict) -> bool:
    """The trainer container has a log: it runs or has run."""
    from kubetune.controller.builders import TRAINER_CONTAINER

    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == TRAINER_CONTAINER:
            state = status.get("state") or {}
            return "running" in state or "terminated" in state
    return False


def _waiting_reason(pod: dict) -> str:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (status.get("state") or {}).get("waiting")
        if waiting:
            return waiting.get("reason") or "waiting"
    return (pod.get("status") or {}).get("phase") or "Pending"


def _live(pod: dict) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Pending", "Running") and not pod["metadata"].get(
        "deletionTimestamp"
    )


def current_pod(pods: list[dict], exclude: set[str] = frozenset()) -> dict | None:
    """The pod whose log is the job's log now: of the first node (the one that reports progress), the live one,
    else the newest. A retry is a new pod of the same Job, so this follows a job across its attempts."""
    first = [
        p
        for p in pods
        if (p["metadata"].get("annotations") or {}).get(COMPLETION_INDEX, "0") == "0"
        and p["metadata"].get("uid") not in exclude
    ]
    if not first:
        return None
    return max(
        first,
        key=lambda p: (
            _live(p),
            p["metadata"].get("creationTimestamp") or "",
            (p.get("status") or {}).get("startTime") or "",
        ),
    )


def _no_pod(ftj: dict) -> CliError:
    from kubetune.usercli.summary import summarize

    s = summarize(ftj)
    why = s["queue"] or s["message"] or ("no status yet" if s["phase"] == "Unknown" else "")
    return CliError(
        f"{s['namespace']}/{s['name']} has no training pod (phase {s['phase']}" + (f": {why}" if why else "") + ")"
    )


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def cmd_logs(args: argparse.Namespace) -> int:
    from kubetune.controller.builders import TRAINER_CONTAINER, selector

    cluster = _cluster(args)
    ftj = _fetch(cluster, args.name)
    namespace, name = ftj["metadata"]["namespace"], ftj["metadata"]["name"]
    pod = current_pod(cluster.pods(namespace, selector(name)))
    if not args.follow:
        if pod is None:
            raise _no_pod(ftj)
        if not _started(pod):
            raise CliError(
                f"{namespace}/{name}: the trainer has not started yet (pod {pod['metadata']['name']} "
                f"is {_waiting_reason(pod)})"
            )
        _say(f"==> pod {pod['metadata']['name']} <==")
        for line in cluster.pod_log(namespace, pod["metadata"]["name"], TRAINER_CONTAINER, follow=False):
            print(line)
        return 0
    followed: set[str] = set()
    while True:
        pod = _next_pod(cluster, namespace, name, followed)
        if pod is None:
            break
        followed.add(pod["metadata"]["uid"])
        _say(f"==> pod {pod['metadata']['name']} <==")
        for line in cluster.pod_log(namespace, pod["metadata"]["name"], TRAINER_CONTAINER, follow=True):
            print(line, flush=True)
    ftj = cluster.get_job(name, namespace)
    from kubetune.usercli.summary import summarize

    s = summarize(ftj)
    _say(f"==> {namespace}/{name} {s['phase']}" + (f": {s['message']}" if s["message"] else "") + " <==")
    return 0


def _next_pod(cluster, namespace: str, name: str, followed: set[str]) -> dict | None:
    """The next pod with a log that was not followed yet, waiting (on a pod watch) while the job is unfinished;
    None once the job has finished and no such pod is left."""
    from kubetune.controller.builders import selector
    from kubetune.usercli.summary import is_finished

    waiting_said = ""
    while True:
        listed = cluster.call(
            f'pods in namespace "{namespace}"',
            cluster.core.list_namespaced_pod,
            namespace,
            label_selector=selector(name),
        )
        pods = listed.get("items") or []
        pod = current_pod(pods, exclude=followed)
        if pod is not None and _started(pod):
            return pod
        ftj = cluster.get_job(name, namespace)
        if is_finished(ftj):
            return None
        said = f"waiting for the trainer of {namespace}/{name} to start (phase {ftj.get('status', {}).get('phase')}" + (
            f", pod {pod['metadata']['name']} is {_waiting_reason(pod)})" if pod else ")"
        )
        if said != waiting_said:
            _say(said)
            waiting_said = said
        _wait_for_pod_change(cluster, namespace, selector(name), listed["metadata"].get("resourceVersion"))


def _wait_for_pod_change(cluster, namespace: str, label_selector: str, resource_version: str | None) -> None:
    import kubernetes

    watch = kubernetes.watch.Watch()
    try:
        for _ in watch.stream(
            cluster.core.list_namespaced_pod,
            namespace,
            label_selector=label_selector,
            resource_version=resource_version,
            timeout_seconds=POD_WATCH_SECONDS,
            deserialize=False,
        ):
            break
    except kubernetes.client.ApiException as err:
        if err.status != 410:  # too old: the next list starts afresh
            from kubetune.usercli.cluster import describe_api_error

            raise CliError(describe_api_error(err, f'pods in namespace "{namespace}"')) from None
    finally:
        watch.stop()


# ----------------------------------------------------------------------------------------- metrics


METRIC_COLUMNS = (
    "step",
    "stage",
    "epoch",
    "loss",
    "eval_loss",
    "learning_rate",
    "grad_norm",
    "tokens_per_second",
    "reward",
)


def merged_by_step(records: list[dict]) -> list[dict]:
    """One row per (stage, step): the trainer logs training and evaluation of a step as separate records."""
    rows: dict[tuple, dict] = {}
    for record in records:
        rows.setdefault((record.get("stage") or "", record["step"]), {}).update(record)
    return list(rows.values())


def metrics_table(records: list[dict]) -> list[str]:
    from kubetune.usercli.plots import eval_keys
    from kubetune.usercli.summary import format_number, table

    records = merged_by_step(records)
    keys = [k for k in METRIC_COLUMNS if any(k in r for r in records)]
    keys += [k for k in eval_keys(records) if k not in keys]
    rows = [tuple(k.upper() for k in keys)]
    rows += [tuple(format_number(r[k]) if k in r else "" for k in keys) for r in records]
    return table(rows)


def cmd_metrics(args: argparse.Namespace) -> int:
    from kubetune.usercli.outputs import read_metrics

    cluster = _cluster(args)
    ftj = _fetch(cluster, args.name)
    records = read_metrics(ftj, cluster, args.s3_endpoint)
    if args.plot:
        from kubetune.usercli.plots import plot_runs

        label = f"{ftj['metadata']['namespace']}/{ftj['metadata']['name']}"
        plot_runs({label: records}, args.plot, title=label)
        _say(f"wrote {args.plot}")
    elif args.raw:
        for record in records:
            print(json.dumps(record))
    elif records:
        print("\n".join(metrics_table(records)))
    else:
        _say("metrics.jsonl has no records yet")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from kubetune.usercli.outputs import read_metrics
    from kubetune.usercli.plots import series
    from kubetune.usercli.summary import format_number, phase_of, table

    cluster = _cluster(args)
    runs: dict[str, list[dict]] = {}
    rows = [("JOB", "PHASE", "STEPS", "LAST LOSS", "BEST EVAL LOSS")]
    for reference in args.names:
        ftj = _fetch(cluster, reference)
        label = f"{ftj['metadata']['namespace']}/{ftj['metadata']['name']}"
        records = read_metrics(ftj, cluster, args.s3_endpoint)
        runs[label] = records
        train, evals = series(records, "loss"), series(records, "eval_loss")
        best = min(evals, key=lambda p: p[1]) if evals else None
        rows.append(
            (
                label,
                phase_of(ftj) or "-",
                str(max((r["step"] for r in records), default=0)),
                format_number(train[-1][1]) if train else "-",
                f"{format_number(best[1])} (step {best[0]})" if best else "-",
            )
        )
    print("\n".join(table(rows)))
    if args.plot:
        from kubetune.usercli.plots import plot_runs

        plot_runs(runs, args.plot, title="kubetune compare")
        _say(f"wrote {args.plot}")
    return 0


# ----------------------------------------------------------------------------------------- download


def cmd_download(args: argparse.Namespace) -> int:
    from kubetune.usercli.outputs import download_model

    cluster = _cluster(args)
    ftj = _fetch(cluster, args.name)
    dest = Path(args.dir)
    if dest.exists() and not dest.is_dir():
        raise CliError(f"{dest}: exists and is not a folder")
    if dest.is_dir() and any(dest.iterdir()) and not args.force:
        raise CliError(f"{dest}: the folder is not empty (--force writes into it anyway)")
    copied = download_model(ftj, dest, cluster, args.s3_endpoint)
    _say(f"downloaded {len(copied)} file(s) to {dest}")
    return 0


# ----------------------------------------------------------------------------------------- dashboard


def cmd_dashboard(args: argparse.Namespace) -> int:
    from kubetune.usercli.dashboard.server import serve

    return serve(
        _cluster(args),
        namespaces=args.watch_namespaces,
        port=args.port,
        open_browser=args.open,
        s3_endpoint=args.s3_endpoint,
        refresh_seconds=args.refresh,
    )


# ----------------------------------------------------------------------------------------- parser


def _guarded(prog: str, command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """The command, with every failure a user can meet turned into one line and exit status 1."""

    def run(args: argparse.Namespace) -> int:
        from kubetune.usercli.outputs import limit_store_retries

        limit_store_retries()
        try:
            return command(args)
        except CliError as err:
            print(f"{prog}: error: {err}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        except BrokenPipeError:  # the reader went away (`| head`)
            sys.stderr.close()
            return 0

    return run


def _connection_options(parser: argparse.ArgumentParser, namespace: bool = True) -> None:
    if namespace:
        parser.add_argument("-n", "--namespace", help="the namespace (default: the kubeconfig context's)")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")


def _store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--s3-endpoint",
        metavar="URL",
        help="S3 endpoint this machine reaches (default: spec.output.endpoint, else $AWS_ENDPOINT_URL)",
    )


# ----------------------------------------------------------------------------------------- retry


def cmd_retry(args: argparse.Namespace) -> int:
    from kubetune.usercli.retry import plan_retry

    cluster = _cluster(args)
    ftj = _fetch(cluster, args.name)
    retry = plan_retry(ftj, backoff_limit=args.backoff_limit, active_deadline_seconds=args.active_deadline_seconds)
    cluster.patch_job(ftj["metadata"]["name"], ftj["metadata"]["namespace"], retry.patch)
    print(retry.words)
    return 0


def add_user_commands(sub, prog: str) -> None:
    """The user's commands, on `kubetune` and on `kubectl ftj` alike."""
    p = sub.add_parser("status", help="a FineTuneJob's phase, progress, checkpoints and outputs")
    p.add_argument("name", metavar="NAME", help="NAME or NAMESPACE/NAME")
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    _connection_options(p)
    p.set_defaults(func=_guarded(prog, cmd_status))

    p = sub.add_parser("logs", help="the log of a FineTuneJob's current training pod (across retries with -f)")
    p.add_argument("name", metavar="NAME", help="NAME or NAMESPACE/NAME")
    p.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="stream the log, and the next attempt's when a pod is retried, until the job finishes",
    )
    _connection_options(p)
    p.set_defaults(func=_guarded(prog, cmd_logs))

    p = sub.add_parser("metrics", help="a FineTuneJob's metrics.jsonl, as a table or a plot")
    p.add_argument("name", metavar="NAME", help="NAME or NAMESPACE/NAME")
    p.add_argument("--plot", metavar="FILE.png", help="write loss and eval-loss curves (needs kubetune[plot])")
    p.add_argument("--raw", action="store_true", help="print the records as JSON lines")
    _connection_options(p)
    _store_options(p)
    p.set_defaults(func=_guarded(prog, cmd_metrics))

    p = sub.add_parser("compare", help="several FineTuneJobs' loss and eval-loss curves side by side")
    p.add_argument("names", nargs="+", metavar="NAME", help="NAME or NAMESPACE/NAME, two or more")
    p.add_argument("--plot", metavar="FILE.png", help="write their curves on one plot (needs kubetune[plot])")
    _connection_options(p)
    _store_options(p)
    p.set_defaults(func=_guarded(prog, cmd_compare))

    p = sub.add_parser("download", help="copy a FineTuneJob's final model to a local folder")
    p.add_argument("name", metavar="NAME", help="NAME or NAMESPACE/NAME")
    p.add_argument("dir", metavar="DIR", help="local folder (created if missing)")
    p.add_argument("--force", action="store_true", help="write into a folder that is not empty")
    _connection_options(p)
    _store_options(p)
    p.set_defaults(func=_guarded(prog, cmd_download))

    p = sub.add_parser(
        "retry",
        help="re-open a FineTuneJob that failed for its backoffLimit or deadline: it resumes "
        "from its newest complete checkpoint",
    )
    p.add_argument("name", metavar="NAME", help="NAME or NAMESPACE/NAME")
    p.add_argument(
        "--backoff-limit",
        type=int,
        metavar="N",
        help="the new spec.backoffLimit (default: the attempts so far plus the limit the job had)",
    )
    p.add_argument(
        "--active-deadline-seconds",
        type=int,
        metavar="SECONDS",
        help="the new spec.activeDeadlineSeconds, 0 for none (default: twice the one the job had)",
    )
    _connection_options(p)
    p.set_defaults(func=_guarded(prog, cmd_retry))

    p = sub.add_parser("dashboard", help="a local web page of every FineTuneJob you can see, live")
    p.add_argument(
        "-n",
        "--namespace",
        dest="watch_namespaces",
        action="append",
        default=[],
        metavar="NAMESPACE",
        help="show only this namespace (repeatable; default: every namespace you may list)",
    )
    p.add_argument("--port", type=int, default=8470, help="port on 127.0.0.1 (0: any free one)")
    p.add_argument("--open", action="store_true", help="open the page in a browser")
    p.add_argument(
        "--refresh",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="read a running job's metrics.jsonl again at most this often, when its step moved (default 10)",
    )
    _connection_options(p, namespace=False)
    _store_options(p)
    p.set_defaults(func=_guarded(prog, cmd_dashboard), namespace=None)


def kubectl_main(argv: list[str] | None = None) -> int:
    """`kubectl ftj ...`: the user's commands as a kubectl plugin."""
    parser = argparse.ArgumentParser(prog="kubectl ftj", description="kubetune FineTuneJobs, for their users.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_user_commands(sub, "kubectl ftj")
    args = parser.parse_args(argv)
    return args.func(args)


def kubectl_entry() -> None:
    sys.exit(kubectl_main())
