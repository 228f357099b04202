"""spec.resumeFrom: a new run that starts from another run's checkpoint, so a user who fixed a bad data row or
wants more epochs keeps the work done.

The source is a checkpoint folder (`.../checkpoints/step-<N>/`), or a run's output root (its newest complete
checkpoint). The operator resolves a FineTuneJob's name to that job's output root and passes it as
KUBETUNE_RESUME_FROM; `kubetune run` takes a URI in spec.resumeFrom itself. Only complete checkpoints (marker
written last) are used.

What is taken depends on how the source run was trained, read from its spec.resolved.yaml:
- the same model, technique (with its own section), objective and quantization are required: the weights of
  another architecture or adapter cannot be loaded;
- everything that shapes the optimisation also equal (datasets, batch, accumulation, learning rate and its
  schedule, precision, seed) except how long it runs (epochs, maxSteps): the run *continues* the source, with its
  optimizer state, scheduler, step count, data position and metrics, and ends where the source would have ended
  had it run that long;
- otherwise only the weights are taken, and the new run trains from step 0 with a fresh optimizer.
A run that already has checkpoints of its own resumes those, never the source again.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import yaml

from kubetune.api.constants import TECHNIQUE_SECTIONS
from kubetune.api.uris import join_uri
from kubetune_trainer.errors import UserError

log = logging.getLogger("kubetune.resume_from")

ENV = "KUBETUNE_RESUME_FROM"
# Spec sections that must match for a checkpoint's weights to load at all.
SAME_WEIGHTS = ("model", "technique", "objective", *TECHNIQUE_SECTIONS, "classification")
# What may differ while the run still continues the source's optimisation: how long it trains.
LENGTH_ONLY = ("epochs", "maxSteps")


@dataclass
class Source:
    checkpoint: object  # checkpoints.RemoteCheckpoint
    storage: object
    root: str  # the source run's output root
    continues: bool  # optimizer, step and data position too (else weights only)
    why: str


def source_uri(spec) -> str | None:
    """Where to start from: the operator's resolution of spec.resumeFrom, else spec.resumeFrom as a URI."""
    if os.environ.get(ENV):
        return os.environ[ENV]
    if not spec.resume_from:
        return None
    if "://" not in spec.resume_from:
        raise UserError(
            f"spec.resumeFrom: {spec.resume_from!r} names a FineTuneJob, which only the operator can find; "
            "outside a cluster give its checkpoint or output URI (s3://... or file://...)"
        )
    return spec.resume_from


def _differences(old, new, path="") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{path}.{key}" if path else key)
        return out
    return [] if old == new else [path]


def compare(source_spec: dict, spec: dict) -> tuple[bool, str]:
    """(continues, why) for a run of `spec` starting from a run of `source_spec` (both as written to
    spec.resolved.yaml); UserError when the weights cannot be loaded."""
    weights = [d for key in SAME_WEIGHTS for d in _differences(source_spec.get(key), spec.get(key), key)]
    if weights:
        raise UserError(
            f"spec.resumeFrom: the checkpoint was trained with a different {', '.join(weights[:4])}; "
            "its weights do not fit this job"
        )
    training = _differences(
        {k: v for k, v in source_spec.items() if k in ("datasets", "hyperparameters")},
        {k: v for k, v in spec.items() if k in ("datasets", "hyperparameters")},
    )
    training = [d for d in training if d.rsplit(".", 1)[-1] not in LENGTH_ONLY]
    if training:
        return False, f"weights only (the optimisation differs: {', '.join(training[:4])})"
    return True, "continuing its optimizer, schedule, step and metrics"


def find(spec, uri: str) -> Source:
    from kubetune_trainer.checkpoints import RemoteCheckpoint, complete_checkpoints
    from kubetune_trainer.layout import COMPLETE_MARKER, OutputLayout
    from kubetune_trainer.storage import get_storage

    storage = get_storage(uri, credentials_role="output", spec=spec)
    folder = uri if uri.endswith("/") else uri + "/"
    if "/checkpoints/step-" in folder:
        root = folder.split("/checkpoints/step-", 1)[0] + "/"
        step = int(folder.rstrip("/").rsplit("step-", 1)[1])
        if not storage.exists(join_uri(folder, COMPLETE_MARKER)):
            raise UserError(f"spec.resumeFrom: {uri} is not a complete checkpoint (it has no {COMPLETE_MARKER})")
        marker = json.loads(storage.read_text(join_uri(folder, COMPLETE_MARKER)))
        checkpoint = RemoteCheckpoint(step, folder, True, marker)
    else:
        root = folder
        complete = complete_checkpoints(storage, OutputLayout(root))
        if not complete:
            raise UserError(f"spec.resumeFrom: {uri} holds no complete checkpoint")
        checkpoint = complete[-1]
    try:
        source_spec = yaml.safe_load(storage.read_text(OutputLayout(root).spec_uri))["spec"]
    except (FileNotFoundError, TypeError, KeyError, yaml.YAMLError):
        raise UserError(
            f"spec.resumeFrom: {root} has no readable spec.resolved.yaml, so its checkpoint cannot be "
            "checked against this job"
        ) from None
    continues, why = compare(source_spec, spec.to_wire())
    return Source(checkpoint, storage, root, continues, why)
