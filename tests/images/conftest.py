"""The container images, built from the repository's Dockerfiles and run on a real Docker engine.

Opt-in: `make test-images` (run by CI) sets KUBETUNE_IMAGE_TESTS=1; a plain pytest skips these tests and
says so. Without a usable engine (not root, no apt, dockerd cannot start) they skip with the reason.
The bases are local stand-ins (engine.py); only the build arguments that name the base differ from a
release build (`make images`). Sizes and build times print at the end of the session.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from engine import Engine, EngineUnavailable  # noqa: E402
from imageset import MB, REGISTRY, Images, chart_version  # noqa: E402

OPT_IN = "KUBETUNE_IMAGE_TESTS"
# The first test also builds the bases and the images (about 4 minutes from nothing on 2 cores).
TIMEOUT_SECONDS = 2400
_REPORT = pytest.StashKey[dict]()


def _report(config) -> dict:
    return config.stash.setdefault(_REPORT, {"timings": {}, "sizes": {}})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if Path(str(item.fspath)).parent == HERE:
            item.add_marker(pytest.mark.timeout(TIMEOUT_SECONDS))


@pytest.fixture(scope="session")
def engine(request):
    if os.environ.get(OPT_IN) != "1":
        pytest.skip(
            f"builds and runs the container images on a Docker engine: run with `make test-images` ({OPT_IN}=1)"
        )
    try:
        engine = Engine.ensure()
    except EngineUnavailable as err:
        pytest.skip(f"no Docker engine here: {err}")
    yield engine
    _report(request.config)["timings"].update(engine.timings)
    engine.stop()


@pytest.fixture(scope="session")
def images(engine, request) -> Images:
    """Both images, built the way `make images` builds them, on the stand-in bases."""
    begin = time.monotonic()
    version = chart_version()
    torch_version = importlib.metadata.version("torch").split("+")[0]  # the torch the test suite runs on
    python_base = engine.python_standin()
    pytorch_base = engine.pytorch_standin(torch_version)
    built = Images(
        engine, version, f"{REGISTRY}/operator:{version}", f"{REGISTRY}/trainer:{version}", python_base, pytorch_base
    )
    engine.build(REPO / "operator" / "Dockerfile", REPO, built.operator, {"PYTHON_IMAGE": python_base})
    engine.build(REPO / "trainer" / "Dockerfile", REPO, built.trainer, {"BASE_IMAGE": pytorch_base})
    report = _report(request.config)
    report["timings"]["stand-in bases and both images, in all"] = time.monotonic() - begin
    report["sizes"] = built.sizes()
    return built


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    report = config.stash.get(_REPORT, None)
    if not report or not (report["sizes"] or report["timings"]):
        return
    terminalreporter.section("container images")
    for image, size in report["sizes"].items():
        terminalreporter.write_line(f"{image:<55}{size / MB:>10.0f} MB")
    for what, seconds in report["timings"].items():
        terminalreporter.write_line(f"{what:<55}{seconds:>10.1f} s")
