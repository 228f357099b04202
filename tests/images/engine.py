"""A Docker engine for the image tests, and the stand-in base images the repository's Dockerfiles build on.

`Engine.ensure()` installs Debian's docker.io (and debootstrap, for the bases) when they are missing, starts
dockerd when none answers, and raises `EngineUnavailable` with the reason when that cannot work (not root,
no apt, a kernel without overlayfs...): the tests skip with that reason.

No registry is reachable on the machines CI runs on, so `FROM python:3.11-slim-bookworm` and
`FROM pytorch/pytorch:...` cannot be pulled. The stand-ins are built here once and kept as local tags:
- python: a debootstrap'd Debian bookworm with python3.11 in a venv at /usr/local, so `python` and `pip`
  are where python:3.11-slim has them;
- pytorch: the python stand-in plus the CPU build of torch, from the wheel on local disk when there is one.
The host's pip configuration and CA certificates go into the python stand-in (outbound TLS may pass a proxy
with its own CA, and pip must trust it inside builds); they never go into the repository's Dockerfiles.
A stand-in is rebuilt only when its recipe (this file's RECIPE_VERSION, the CA bundle, the wheel) changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PYTHON_STANDIN = "kubetune-standin/python:3.11-slim-bookworm"
PYTORCH_STANDIN = "kubetune-standin/pytorch:{torch}-cpu"
RECIPE_LABEL = "dev.kubetune.standin-recipe"
RECIPE_VERSION = "1"  # bump when the recipes below change
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
HOST_PIP_CONF = Path("/etc/pip.conf")
WHEELS = Path(os.environ.get("KUBETUNE_WHEELS", "/opt/wheels"))
DEBIAN_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
DOCKERD_ARGS = ["--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=overlay2"]
DOCKERD_LOG = Path(tempfile.gettempdir()) / "kubetune-dockerd.log"


class EngineUnavailable(Exception):
    """No Docker engine can run here; the message says why."""


def run(
    cmd: list[str],
    *,
    timeout: float = 600,
    check: bool = True,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        cmd,
        capture_output=True,
        timeout=timeout,
        input=input,
        check=False,
        env=None if env is None else os.environ | env,
    )
    if check and result.returncode != 0:
        tail = (result.stdout + result.stderr).decode(errors="replace")[-4000:]
        raise RuntimeError(f"{' '.join(cmd[:6])}... exited {result.returncode}:\n{tail}")
    return result


@dataclass
class Engine:
    """The docker CLI against a running daemon; `started` is the daemon this process started (stopped by stop())."""

    docker: str = "docker"
    started: subprocess.Popen | None = None
    timings: dict[str, float] = field(default_factory=dict)

    # ------------------------------------------------------------------ the engine itself

    @classmethod
    def ensure(cls) -> Engine:
        engine = cls()
        if not shutil.which("dockerd") or not shutil.which("debootstrap"):
            engine._install()
        engine.docker = shutil.which("docker") or "docker"
        if not engine._answers():
            engine._start_daemon()
        return engine

    def _install(self) -> None:
        if os.geteuid() != 0:
            raise EngineUnavailable("docker.io or debootstrap is missing and installing them needs root")
        if not shutil.which("apt-get"):
            raise EngineUnavailable("docker.io or debootstrap is missing and there is no apt-get to install them")
        begin = time.monotonic()
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        try:
            run(["apt-get", "update", "-qq"], env=env, timeout=300)
            run(
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "docker.io", "debootstrap"],
                env=env,
                timeout=600,
            )
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            raise EngineUnavailable(f"installing docker.io and debootstrap failed: {str(err)[-500:]}") from None
        self.timings["install docker.io, debootstrap"] = time.monotonic() - begin

    def _answers(self) -> bool:
        try:
            return run([self.docker, "info", "--format", "{{.ServerVersion}}"], check=False, timeout=20).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def _start_daemon(self) -> None:
        if os.geteuid() != 0:
            raise EngineUnavailable("no Docker daemon answers and starting dockerd needs root")
        dockerd = shutil.which("dockerd")
        if not dockerd:
            raise EngineUnavailable("no Docker daemon answers and dockerd is not installed")
        log = DOCKERD_LOG.open("ab")
        # No iptables or bridge: containers here use the host's network (--network host), which is all the
        # tests need, and dockerd starts where the kernel or the sandbox offers no netfilter.
        self.started = subprocess.Popen(
            [dockerd, *DOCKERD_ARGS], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._answers():
                return
            if self.started.poll() is not None:
                break
            time.sleep(0.5)
        self.stop()
        tail = DOCKERD_LOG.read_text(errors="replace").strip().splitlines()[-3:]
        raise EngineUnavailable(f"dockerd did not start: {' / '.join(tail) or 'no output'} (log: {DOCKERD_LOG})")

    def stop(self) -> None:
        """Stop the daemon this process started (images and the layer cache stay on disk)."""
        if self.started is None:
            return
        if self.started.poll() is None:
            self.started.terminate()
            try:
                self.started.wait(30)
            except subprocess.TimeoutExpired:
                self.started.kill()
                self.started.wait(10)
        self.started = None

    # ------------------------------------------------------------------ images

    def cli(
        self,
        *args: str,
        timeout: float = 600,
        check: bool = True,
        input: bytes | None = None,
    ) -> subprocess.CompletedProcess:
        # The legacy builder: Debian's daemon has no buildx, and the CLI's default (BuildKit) needs it.
        return run([self.docker, *args], timeout=timeout, check=check, input=input, env={"DOCKER_BUILDKIT": "0"})

    def inspect(self, image: str) -> dict | None:
        result = self.cli("image", "inspect", image, check=False, timeout=60)
        return json.loads(result.stdout)[0] if result.returncode == 0 else None

    def size(self, image: str) -> int:
        info = self.inspect(image)
        assert info is not None, f"no image {image}"
        return int(info["Size"])

    def build(
        self, dockerfile: Path, context: Path, tag: str, build_args: dict[str, str], *, timeout: float = 1800
    ) -> None:
        args = ["build", "--force-rm", "--network", "host", "-f", str(dockerfile), "-t", tag]
        for key, value in build_args.items():
            args += ["--build-arg", f"{key}={value}"]
        begin = time.monotonic()
        self.cli(*args, str(context), timeout=timeout)
        self.timings[f"build {tag}"] = time.monotonic() - begin

    # ------------------------------------------------------------------ stand-in bases

    def python_standin(self) -> str:
        recipe = _digest(RECIPE_VERSION, _debian_mirror(), *_host_trust_files())
        if _recipe_of(self.inspect(PYTHON_STANDIN)) == recipe:
            return PYTHON_STANDIN
        begin = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="kubetune-rootfs-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    "--include=python3.11,python3.11-venv,python3-distutils,ca-certificates",
                    "bookworm",
                    str(rootfs),
                    _debian_mirror(),
                ],
                timeout=1200,
            )
            chroot = ["chroot", str(rootfs)]
            # (python3-distutils by name: debootstrap does not resolve the virtual package python3.11-venv needs.)
            # python:3.11-slim keeps python and pip in /usr/local/bin: a venv there puts them in the same place.
            run([*chroot, "python3.11", "-m", "venv", "/usr/local"], timeout=300)
            for crt in HOST_CA_DIR.glob("*.crt"):
                shutil.copy(crt, rootfs / "usr/local/share/ca-certificates" / crt.name)
            run([*chroot, "update-ca-certificates"], timeout=120)
            if HOST_PIP_CONF.exists():
                shutil.copy(HOST_PIP_CONF, rootfs / "etc/pip.conf")
            else:
                (rootfs / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for path in (rootfs / junk).glob("*"):
                    if path.is_file():
                        path.unlink()
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            imported = subprocess.run(
                [
                    self.docker,
                    "import",
                    "--change",
                    "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--change",
                    "ENV LANG=C.UTF-8",
                    "--change",
                    f"LABEL {RECIPE_LABEL}={recipe}",
                    "--change",
                    'CMD ["python3"]',
                    "-",
                    PYTHON_STANDIN,
                ],
                stdin=tar.stdout,
                capture_output=True,
                timeout=600,
                check=False,
            )
            tar.stdout.close()
            tar.wait()
            if imported.returncode != 0:
                raise RuntimeError(f"docker import failed: {imported.stderr.decode(errors='replace')[-2000:]}")
        self.timings[f"stand-in {PYTHON_STANDIN}"] = time.monotonic() - begin
        return PYTHON_STANDIN

    def pytorch_standin(self, torch_version: str) -> str:
        base = self.python_standin()
        tag = PYTORCH_STANDIN.format(torch=torch_version)
        wheels = sorted(WHEELS.glob(f"torch-{torch_version}+cpu-*.whl"))
        recipe = _digest(RECIPE_VERSION, _recipe_of(self.inspect(base)) or "", *(w.name for w in wheels))
        if _recipe_of(self.inspect(tag)) == recipe:
            return tag
        begin = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="kubetune-torch-") as tmp:
            context = Path(tmp)
            if wheels:
                shutil.copy(wheels[0], context / wheels[0].name)
                install = f"/tmp/{wheels[0].name}"
                copy = f"COPY {wheels[0].name} /tmp/\n"
            else:  # the CPU build from PyTorch's own index (a bare `torch` from PyPI is the CUDA build)
                install = f"torch=={torch_version} --index-url https://download.pytorch.org/whl/cpu"
                copy = ""
            (context / "Dockerfile").write_text(
                f"FROM {base}\n{copy}"
                f"RUN pip install --no-cache-dir {install} && rm -f /tmp/*.whl\n"
                f"LABEL {RECIPE_LABEL}={recipe}\n"
            )
            self.build(context / "Dockerfile", context, tag, {}, timeout=1800)
        self.timings[f"stand-in {tag}"] = time.monotonic() - begin
        return tag


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _recipe_of(info: dict | None) -> str | None:
    if not info:
        return None
    return ((info.get("Config") or {}).get("Labels") or {}).get(RECIPE_LABEL)


def _host_trust_files() -> list[bytes]:
    files = sorted(HOST_CA_DIR.glob("*.crt")) + ([HOST_PIP_CONF] if HOST_PIP_CONF.exists() else [])
    return [p.read_bytes() for p in files]


def _debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (a mirror the network here lets through)."""
    for source in DEBIAN_SOURCES:
        if not source.exists():
            continue
        for line in source.read_text().splitlines():
            line = line.strip()
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
            if line.startswith("deb ") and "security" not in line:
                return next(part for part in line.split()[1:] if "://" in part)
    return "http://deb.debian.org/debian"
