"""What the image tests share: where the repository is, the images built for the session, their names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from engine import Engine

REPO = Path(__file__).resolve().parents[2]
# Where the test's images live: the repositories it gives the chart, as docs/quickstart.md does with a registry.
REGISTRY = "kubetune-test"
MB = 1_000_000


@dataclass
class Images:
    engine: Engine
    version: str
    operator: str
    trainer: str
    python_base: str
    pytorch_base: str

    def sizes(self) -> dict[str, int]:
        return {
            image: self.engine.size(image)
            for image in (self.operator, self.python_base, self.trainer, self.pytorch_base)
        }


def chart_version() -> str:
    return str(yaml.safe_load((REPO / "charts" / "kubetune" / "Chart.yaml").read_text())["appVersion"])
