"""Where everything of one run lives under its output root (s3://... or file://...), and the completion marker
every multi-file object in a store (a checkpoint, the rlhf reward model, a fetched model) is finished with."""

from __future__ import annotations

from dataclasses import dataclass

from kubetune.api.uris import join_uri

# Written after every other file of a folder: a folder without it was cut off and is never used.
COMPLETE_MARKER = "_COMPLETE"


@dataclass(frozen=True)
class OutputLayout:
    """Where everything of one run lives under its root URI (s3:// or file://)."""

    root: str

    @property
    def spec_uri(self) -> str:
        return join_uri(self.root, "spec.resolved.yaml")

    @property
    def checkpoints_uri(self) -> str:
        return join_uri(self.root, "checkpoints") + "/"

    def checkpoint_uri(self, step: int) -> str:
        return join_uri(self.root, "checkpoints", f"step-{step}") + "/"

    @property
    def metrics_uri(self) -> str:
        return join_uri(self.root, "metrics.jsonl")

    @property
    def tensorboard_uri(self) -> str:
        return join_uri(self.root, "tensorboard") + "/"

    @property
    def final_uri(self) -> str:
        return join_uri(self.root, "final") + "/"

    @property
    def final_marker_uri(self) -> str:
        """Written after every file of final/: the run is finished."""
        return join_uri(self.root, "final", COMPLETE_MARKER)
