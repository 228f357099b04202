"""What a user wants to know about a FineTuneJob at a glance, read from the object as the API serves it: the
command line (`kubetune status`) and the dashboard show the same summary."""

from __future__ import annotations

import math
from typing import Any

from kubetune.api.constants import ConditionType, Phase

FINISHED_PHASES = (Phase.SUCCEEDED, Phase.FAILED)


def condition(ftj: dict, kind: str) -> dict | None:
    return next((c for c in (ftj.get("status") or {}).get("conditions") or [] if c.get("type") == kind), None)


def phase_of(ftj: dict) -> str:
    return (ftj.get("status") or {}).get("phase") or ""


def is_finished(ftj: dict) -> bool:
    return phase_of(ftj) in FINISHED_PHASES


def phase_reason(ftj: dict) -> str:
    """The reason of the phase: the condition named after the phase when it is true, else the Running condition's
    (the operator writes the reason of every phase there)."""
    phase = phase_of(ftj)
    own = condition(ftj, phase) if phase else None
    if own and own.get("status") == "True":
        return own.get("reason") or ""
    running = condition(ftj, ConditionType.RUNNING)
    return (running or {}).get("reason") or ""


def queue_state(ftj: dict) -> str:
    """Why a job waits for its turn (Kueue or the operator's per-namespace cap), or its queue when admitted."""
    queued = condition(ftj, ConditionType.QUEUED)
    queue_name = (ftj.get("spec") or {}).get("queueName") or ""
    if queued and queued.get("status") == "True":
        return queued.get("message") or queued.get("reason") or "queued"
    if queue_name:
        return (
            f"admitted by LocalQueue {queue_name}"
            if phase_of(ftj) not in ("", Phase.PENDING)
            else f"LocalQueue {queue_name}"
        )
    return ""


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return ""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def format_number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value)}"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.3g}"
    return f"{value:.5g}"


def summarize(ftj: dict) -> dict[str, Any]:
    """The summary both front ends show, JSON-ready."""
    meta = ftj.get("metadata") or {}
    spec = ftj.get("spec") or {}
    status = ftj.get("status") or {}
    progress = status.get("progress") or {}
    metrics = status.get("metrics") or {}
    message = status.get("message") or ""
    if not message and phase_of(ftj) not in (Phase.RUNNING, Phase.SUCCEEDED):
        running = condition(ftj, ConditionType.RUNNING)
        message = (running or {}).get("message") or ""
    return {
        "namespace": meta.get("namespace") or "",
        "name": meta.get("name") or "",
        "uid": meta.get("uid") or "",
        "created": meta.get("creationTimestamp") or "",
        "technique": spec.get("technique") or "",
        "objective": spec.get("objective") or "causal-lm",
        "phase": phase_of(ftj) or "Unknown",
        "reason": phase_reason(ftj),
        "message": message,
        "queue": queue_state(ftj),
        "attempts": status.get("attempts") or 0,
        "step": progress.get("step") or 0,
        "totalSteps": progress.get("totalSteps") or 0,
        "percent": progress.get("percent") or 0,
        "epoch": progress.get("epoch") or 0.0,
        "stage": progress.get("stage") or "",
        "etaSeconds": progress.get("etaSeconds") if not is_finished(ftj) else None,
        "eta": format_duration(progress.get("etaSeconds")) if not is_finished(ftj) else "",
        "loss": metrics.get("loss"),
        "evalLoss": metrics.get("evalLoss"),
        "metrics": metrics,
        "checkpoints": status.get("checkpoints") or [],
        "output": status.get("output") or {},
        "startTime": status.get("startTime") or "",
        "completionTime": status.get("completionTime") or "",
        "finished": is_finished(ftj),
    }


def status_text(ftj: dict) -> str:
    """`kubetune status NAME`: the summary as aligned lines, then the checkpoints and the output URIs."""
    s = summarize(ftj)
    lines = [f"Name:        {s['namespace']}/{s['name']}", f"Technique:   {s['technique']}, objective {s['objective']}"]
    phase = s["phase"] + (f" ({s['reason']})" if s["reason"] else "")
    lines.append(f"Phase:       {phase}")
    if s["message"]:
        lines.append(f"Message:     {s['message']}")
    if s["queue"]:
        lines.append(f"Queue:       {s['queue']}")
    if s["totalSteps"] or s["step"]:
        text = f"step {s['step']}/{s['totalSteps']} ({s['percent']}%), epoch {format_number(s['epoch'])}"
        if s["stage"]:
            text += f", stage {s['stage']}"
        if s["eta"]:
            text += f", ETA {s['eta']}"
        lines.append(f"Progress:    {text}")
    if s["attempts"]:
        lines.append(f"Attempts:    {s['attempts']}")
    if s["metrics"]:
        first = ("loss", "evalLoss", "learningRate", "gradNorm", "tokensPerSecond", "reward")
        order = sorted(s["metrics"], key=lambda k: (first.index(k) if k in first else len(first), k))
        lines.append("Metrics:     " + "  ".join(f"{k} {format_number(s['metrics'][k])}" for k in order))
    if s["startTime"]:
        lines.append(f"Started:     {s['startTime']}")
    if s["completionTime"]:
        lines.append(f"Completed:   {s['completionTime']}")
    checkpoints = sorted(s["checkpoints"], key=lambda c: c.get("step", 0))
    if checkpoints:
        lines.append("Checkpoints:")
        rows = [("STEP", "EVAL LOSS", "TIME", "URI")] + [
            (
                str(c.get("step", "")),
                format_number(c["evalLoss"]) if c.get("evalLoss") is not None else "-",
                c.get("time") or "-",
                c.get("uri", ""),
            )
            for c in checkpoints
        ]
        lines.extend("  " + line for line in table(rows))
    else:
        lines.append("Checkpoints: none yet")
    output = s["output"]
    if output:
        lines.append("Output:")
        for key, label in (
            ("modelUri", "model"),
            ("metricsUri", "metrics"),
            ("tensorboardUri", "tensorboard"),
            ("checkpointsUri", "checkpoints"),
        ):
            if output.get(key):
                lines.append(f"  {label + ':':<13}{output[key]}")
    return "\n".join(lines)


def table(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as left-aligned columns (the first row is the header)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
