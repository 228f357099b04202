"""A FineTuneJob's results in its output store (s3:// or file://), read with the user's own credentials through
the trainer's storage code (kubetune_trainer.storage), so the CLI and the trainer agree on schemes, endpoints,
retries and the completion marker.

Where they are: status.output (the trainer reports it when training ends); before that, the run's output root
as the operator names it (controller.builders.output_root) from spec.output.uri, or the root the operator gave
the child Job when the spec leaves the URI to the operator's default.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.usercli import CliError

if TYPE_CHECKING:
    from kubetune.api.v1alpha1 import Spec
    from kubetune.usercli.cluster import Cluster

OUTPUT_ROOT_ENV = "KUBETUNE_OUTPUT_URI"  # what the operator tells the trainer (controller.builders.trainer_env)


def limit_store_retries() -> None:
    """A user's command waits for an unreachable store for seconds, not through the trainer's five retries (the
    storage code reads KUBETUNE_S3_MAX_ATTEMPTS; a value the user set is kept)."""
    os.environ.setdefault("KUBETUNE_S3_MAX_ATTEMPTS", "2")


@dataclass(frozen=True)
class Outputs:
    """Where one run's results are (None: not known yet)."""

    root: str | None
    metrics_uri: str | None
    model_uri: str | None
    tensorboard_uri: str | None
    checkpoints_uri: str | None


def parsed_spec(ftj: dict) -> Spec | None:
    """The job's spec as the trainer reads it; None when it is not valid (the job never ran)."""
    from kubetune.api.validation import SpecError, parse_spec

    try:
        return parse_spec(ftj.get("spec") or {}, name=ftj["metadata"]["name"]).resolved()
    except (SpecError, ValueError, TypeError):
        return None


def _root_from_child_job(ftj: dict, cluster: Cluster) -> str | None:
    status = ftj.get("status") or {}
    meta = ftj["metadata"]
    job = cluster.child_job(meta["namespace"], status.get("jobName") or meta["name"])
    for container in (job or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []:
        for env in container.get("env") or []:
            if env.get("name") == OUTPUT_ROOT_ENV and env.get("value"):
                return env["value"]
    return None


def locate(ftj: dict, cluster: Cluster | None = None) -> Outputs:
    from kubetune_trainer.layout import OutputLayout

    reported = (ftj.get("status") or {}).get("output") or {}
    meta = ftj["metadata"]
    root = None
    spec = parsed_spec(ftj)
    if spec is not None and spec.output.uri and meta.get("uid"):
        from kubetune.controller.builders import output_root

        root = output_root(spec, meta["namespace"], meta["name"], meta["uid"])
    elif cluster is not None and not reported.get("metricsUri"):
        root = _root_from_child_job(ftj, cluster)
    layout = OutputLayout(root) if root else None
    return Outputs(
        root=root,
        metrics_uri=reported.get("metricsUri") or (layout.metrics_uri if layout else None),
        model_uri=reported.get("modelUri") or (layout.final_uri if layout else None),
        tensorboard_uri=reported.get("tensorboardUri") or (layout.tensorboard_uri if layout else None),
        checkpoints_uri=reported.get("checkpointsUri") or (layout.checkpoints_uri if layout else None),
    )


def _users_words(message: str) -> str:
    """The storage code speaks to whoever wrote the spec (its credentialsSecret); here the user's own
    credentials are at stake."""
    return message.replace("check the credentialsSecret", "check your own AWS credentials").replace(
        "set credentialsSecret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
    )


class Store:
    """One job's output store, opened with the user's credentials; every failure is a CliError."""

    def __init__(self, ftj: dict, uri: str, endpoint: str | None = None):
        self.uri = uri
        spec = parsed_spec(ftj)
        if spec is not None and endpoint:
            # The endpoint a pod reaches (a cluster-internal name) is often not the one this machine reaches.
            spec = spec.model_copy(update={"output": spec.output.model_copy(update={"endpoint": endpoint})})
        elif endpoint:
            os.environ["AWS_ENDPOINT_URL"] = endpoint
        try:
            from kubetune_trainer.storage import get_storage

            self._storage = get_storage(uri, credentials_role="output", spec=spec)
        except ImportError as err:
            raise CliError(f"reading {uri} needs {err.name}: pip install 'kubetune[cli]'") from None
        except Exception as err:  # noqa: BLE001 - the storage's UserError names the URI
            raise self._error(err) from None

    def _error(self, err: Exception) -> CliError:
        from kubetune_trainer.errors import TrainerError

        if isinstance(err, TrainerError):
            return CliError(_users_words(err.message))
        return CliError(f"{self.uri}: {type(err).__name__}: {' '.join(str(err).split())}")

    def run(self, what: str, fn, *args: Any) -> Any:
        try:
            return fn(*args)
        except FileNotFoundError:
            raise CliError(f"{what}: {args[0] if args else self.uri} does not exist") from None
        except Exception as err:  # noqa: BLE001 - translated
            raise self._error(err) from None

    def read_text(self, uri: str) -> str | None:
        """The object's text; None when there is no such object."""
        try:
            return self._storage.read_text(uri)
        except FileNotFoundError:
            return None
        except Exception as err:  # noqa: BLE001 - translated
            raise self._error(err) from None

    def exists(self, uri: str) -> bool:
        return self.run(uri, self._storage.exists, uri)

    def list(self, prefix: str) -> list[str]:
        return self.run(prefix, self._storage.list, prefix)

    def download_file(self, uri: str, path: Path) -> Path:
        return self.run(uri, self._storage.download_file, uri, path)


def parse_metrics(text: str) -> list[dict]:
    """metrics.jsonl's records (a line cut off by a concurrent upload is skipped)."""
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


def job_label(ftj: dict) -> str:
    return f"{ftj['metadata']['namespace']}/{ftj['metadata']['name']}"


def read_metrics(ftj: dict, cluster: Cluster | None = None, endpoint: str | None = None) -> list[dict]:
    outputs = locate(ftj, cluster)
    if not outputs.metrics_uri:
        raise CliError(
            f"{job_label(ftj)} has no metrics yet: status.output.metricsUri is not set and the output "
            "location is not known yet"
        )
    text = Store(ftj, outputs.metrics_uri, endpoint).read_text(outputs.metrics_uri)
    if text is None:
        raise CliError(
            f"{job_label(ftj)} has no metrics yet: {outputs.metrics_uri} does not exist "
            "(the trainer writes it once training logs its first step)"
        )
    return parse_metrics(text)


def download_model(ftj: dict, dest: Path, cluster: Cluster | None = None, endpoint: str | None = None) -> list[Path]:
    """Copy the final model (only when complete: the trainer writes its completion marker last) into `dest`."""
    from kubetune.api.uris import join_uri
    from kubetune.usercli.summary import phase_of
    from kubetune_trainer.layout import COMPLETE_MARKER

    outputs = locate(ftj, cluster)
    phase = phase_of(ftj) or "no status yet"
    if not outputs.model_uri:
        raise CliError(f"{job_label(ftj)} has no final model yet (phase {phase})")
    store = Store(ftj, outputs.model_uri, endpoint)
    if not store.exists(join_uri(outputs.model_uri, COMPLETE_MARKER)):
        raise CliError(f"{job_label(ftj)} has no complete final model at {outputs.model_uri} yet (phase {phase})")
    base = outputs.model_uri if outputs.model_uri.endswith("/") else outputs.model_uri + "/"
    copied = []
    for uri in store.list(base):
        relative = uri[len(base) :]
        if not relative or relative.endswith("/") or relative == COMPLETE_MARKER:
            continue
        copied.append(store.download_file(uri, dest / relative))
    return copied
