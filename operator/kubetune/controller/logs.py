"""The operator's log: one line per action on a FineTuneJob, so that `kubectl logs deploy/kubetune-operator`
answers "what happened to my job".

Every line about a job carries the job (kopf's `k8s_ref`: namespace, name, uid) and a reason (the Event reason,
or what the operator did). kopf's own formatters print them: as text, "[namespace/name] Reason: what
happened"; as JSON (`--log-format json`, KUBETUNE_LOG_FORMAT=json), one object per line with "message",
"severity", "timestamp", "object" ({"namespace", "name", ...}) and "reason", the form log collectors index.
"""

from __future__ import annotations

import logging
from typing import Any

from kubetune.api.constants import API_VERSION, KIND

log = logging.getLogger("kubetune.operator")

LOG_FORMATS = ("text", "json")


def job_ref(namespace: str, name: str, uid: str | None = None) -> dict[str, Any]:
    """A FineTuneJob as kopf's formatters expect an object reference."""
    return {"apiVersion": API_VERSION, "kind": KIND, "namespace": namespace, "name": name, "uid": uid}


def action(
    namespace: str, name: str, reason: str, message: str, *, level: int = logging.INFO, uid: str | None = None
) -> None:
    """One line: what happened to one FineTuneJob, and why."""
    log.log(level, "%s: %s", reason, message, extra={"k8s_ref": job_ref(namespace, name, uid), "reason": str(reason)})


def configure(log_format: str) -> None:
    """The process's logging, through kopf's formatters (its own per-object lines look the same): "text" with
    the object prefixed, or "json"."""
    import kopf

    if log_format not in LOG_FORMATS:
        raise ValueError(f"the log format must be one of {', '.join(LOG_FORMATS)} (got {log_format!r})")
    kopf.configure(
        log_format=kopf.LogFormat.JSON if log_format == "json" else kopf.LogFormat.FULL, log_prefix=log_format != "json"
    )
