"""ConsoleReporter: training progress on the console (`kubetune run`, and the pod's logs), the one progress display
a run prints; and `quiet_library_noise`, which keeps known library notices a user cannot act on off the console.

Without a terminal (a pod's log, a pipe, a file) every logged step is one plain line, so `kubectl logs` and log
collectors get whole lines. In a terminal one bar (tqdm) is redrawn in place, and whatever else is printed while
it is shown (log records, warnings, kubetune's own messages) goes above it instead of running into it.
transformers' own bar and its printed log dicts are taken off every Trainer (`trainer_setup.prepare_trainer`).
"""

from __future__ import annotations

import io
import logging
import sys
import time
import warnings
from datetime import timedelta

from kubetune_trainer.reporting import CheckpointReport, OutputReport, ProgressReport

_ORDER = ["loss", "evalLoss", "learningRate", "gradNorm", "tokensPerSecond", "reward"]
PREFIX = "[kubetune]"


def _fmt(name: str, value: float) -> str:
    if name == "learningRate":
        return f"lr {value:.2e}"
    if name == "tokensPerSecond":
        return f"tok/s {value:,.0f}"
    if name == "gradNorm":
        return f"grad_norm {value:.3f}"
    label = {"evalLoss": "eval_loss"}.get(name, name)
    return f"{label} {value:.4f}"


def progress_details(report: ProgressReport, *, eta_first: bool = False) -> str:
    """Epoch, metrics and ETA of a progress report: what follows the step count on both displays (the bar puts
    the ETA first: a terminal narrower than the line cuts its end)."""
    names = [n for n in _ORDER if n in report.metrics] + sorted(n for n in report.metrics if n not in _ORDER)
    parts = [f"epoch {report.epoch:.2f}"] + [_fmt(n, report.metrics[n]) for n in names]
    if report.eta_seconds is not None:
        eta = f"eta {timedelta(seconds=int(report.eta_seconds))}"
        parts = [eta, *parts] if eta_first else [*parts, eta]
    return " ".join(parts)


def progress_line(report: ProgressReport, width: int = 20) -> str:
    filled = int(width * report.percent / 100)
    bar = "#" * filled + "-" * (width - filled)
    line = f"[{bar}] {report.percent:3d}% step {report.step}/{report.total_steps} {progress_details(report)}"
    return f"({report.stage}) {line}" if report.stage else line


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _AboveTheBar(io.TextIOBase):
    """Stands in for sys.stdout/sys.stderr while the bar is shown: each complete line written is printed above
    the bar (the bar is cleared, the line written, the bar redrawn), so nothing runs into it."""

    def __init__(self, target, bar):
        self.target = target
        self.bar = bar
        self._partial = ""

    def write(self, text: str) -> int:
        self._partial += text
        if "\n" in self._partial:
            lines, self._partial = self._partial.rsplit("\n", 1)
            self._emit(lines + "\n")
        return len(text)

    def _emit(self, text: str) -> None:
        with self.bar.get_lock():
            self.bar.clear(nolock=True)
            self.target.write(text)
            self.target.flush()
            self.bar.refresh(nolock=True)

    def flush(self) -> None:
        if self._partial:
            text, self._partial = self._partial, ""
            self._emit(text + "\n")
        self.target.flush()

    def isatty(self) -> bool:
        return _is_terminal(self.target)

    def fileno(self) -> int:
        return self.target.fileno()

    @property
    def encoding(self):
        return getattr(self.target, "encoding", "utf-8")


def _console_handlers() -> list[logging.StreamHandler]:
    """The stream handlers of every logger made so far (files excluded)."""
    loggers = [
        logging.getLogger(),
        *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)),
    ]
    return [
        handler
        for logger in loggers
        for handler in logger.handlers
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
    ]


class ConsoleReporter:
    """Prints progress, completed checkpoints and the outputs. `interactive` (default: whether `stream` is a
    terminal) picks the display: one bar redrawn in place, or one line per logged step."""

    def __init__(self, stream=None, min_interval: float = 0.0, interactive: bool | None = None):
        self.stream = stream or sys.stdout
        self.min_interval = min_interval
        self.interactive = _is_terminal(self.stream) if interactive is None else interactive
        self._last = 0.0
        self._pending: ProgressReport | None = None
        self._bar = None
        self._bar_key: tuple | None = None
        self._saved_streams: tuple | None = None
        self._saved_handlers: list[tuple[logging.StreamHandler, object]] = []

    def _print(self, text: str) -> None:
        try:
            if self._bar is not None:
                self._bar.write(f"{PREFIX} {text}", file=self.stream)
            else:
                # One write per line: print() writes the line and its end apart, and a log record from another
                # thread (a checkpoint upload) could land between them, on the same line.
                self.stream.write(f"{PREFIX} {text}\n")
                self.stream.flush()
        except Exception:  # noqa: BLE001 - a closed stdout must not stop training
            pass

    def progress(self, report: ProgressReport) -> None:
        if self.interactive:
            try:
                self._draw(report)
            except Exception:  # noqa: BLE001 - a broken terminal must not stop training: plain lines from now on
                self.interactive = False
                try:
                    self._close_bar()
                except Exception:  # noqa: BLE001
                    self._bar = None
            return
        now = time.monotonic()
        if now - self._last < self.min_interval and report.step < report.total_steps:
            self._pending = report
            return
        self._last, self._pending = now, None
        self._print(progress_line(report))

    # ------------------------------------------------------------------ the bar (a terminal)

    def _draw(self, report: ProgressReport) -> None:
        key = (report.stage, report.total_steps)
        if self._bar is None or self._bar_key != key:  # rlhf: each stage gets its own bar
            self._close_bar()
            self._open_bar(report)
            self._bar_key = key
        self._bar.n = report.step
        self._bar.set_description_str(progress_details(report, eta_first=True), refresh=False)
        self._bar.refresh()

    def _open_bar(self, report: ProgressReport) -> None:
        from tqdm import tqdm

        stage = f"({report.stage}) " if report.stage else ""
        self._bar = tqdm(
            total=report.total_steps or None,
            initial=report.step,
            file=self.stream,
            dynamic_ncols=True,  # follows the terminal's width; the line is cut there rather than wrapped
            bar_format=PREFIX + " " + stage + "{percentage:3.0f}%|{bar:20}| step {n}/{total} {desc}",
            mininterval=0,
            disable=False,
            leave=True,
        )
        # Whatever else prints while the bar is shown goes above it: print() and warnings through sys.stdout and
        # sys.stderr, log records also through the handlers that hold the streams themselves (transformers' own).
        self._saved_streams = (sys.stdout, sys.stderr)
        proxies = {
            id(sys.stdout): _AboveTheBar(sys.stdout, self._bar),
            id(sys.stderr): _AboveTheBar(sys.stderr, self._bar),
        }
        sys.stdout, sys.stderr = proxies[id(sys.stdout)], proxies[id(sys.stderr)]
        self._saved_handlers = []
        for handler in _console_handlers():
            proxy = proxies.get(id(handler.stream))
            if proxy is not None:
                self._saved_handlers.append((handler, handler.setStream(proxy)))

    def _close_bar(self) -> None:
        for handler, stream in self._saved_handlers:
            handler.setStream(stream)
        self._saved_handlers = []
        if self._saved_streams is not None:
            for proxy in (sys.stdout, sys.stderr):
                if isinstance(proxy, _AboveTheBar):
                    proxy.flush()
            sys.stdout, sys.stderr = self._saved_streams
            self._saved_streams = None
        if self._bar is not None:
            self._bar.close()  # leaves the bar's last state on its line
            self._bar = None
            self._bar_key = None

    # ------------------------------------------------------------------ the rest

    def checkpoints(self, complete: list[CheckpointReport]) -> None:
        if complete:
            newest = complete[-1]
            self._print(f"checkpoint step-{newest.step} complete: {newest.uri} ({len(complete)} kept)")

    def output(self, report: OutputReport) -> None:
        self._close_bar()
        self._print(f"final model: {report.model_uri}")
        self._print(f"metrics: {report.metrics_uri}  tensorboard: {report.tensorboard_uri}")

    def close(self) -> None:
        self._close_bar()
        if self._pending is not None:
            self._print(progress_line(self._pending))
            self._pending = None


# --------------------------------------------------------------------------- library noise

# Logger name -> message beginnings dropped from it. Each says nothing a user can act on:
# bitsandbytes on a CPU with AVX512-BF16 looks for the optional `kernels` package (a faster 4-bit matmul from the
# Hugging Face hub, which a pod without hub access cannot fetch anyway) and falls back to its own kernel.
NOISY_LOGS: dict[str, tuple[str, ...]] = {
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",),
    # Every step of rlhf's policy stage: GRPO's and RLOO's batches carry prompt_ids, not input_ids, so transformers
    # counts no tokens there (that stage reports no tokens/s) and says so again at each step.
    "transformers.trainer": ("Tried to track the number of tokens seen",),
}

# (category, message regex, module regex of where the warning is attributed). Only these; any other warning shows.
NOISY_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    # peft and trl read the deprecated alias inside their own code; the spec's gradientCheckpointing is passed
    # to transformers under its new name already.
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated", r"transformers\.modeling_utils"),
    # peft's prefix tuning passes the prefix as `past_key_values`; the trainer requires transformers < 5.40,
    # the release that removes it, so the announcement concerns no run.
    (
        FutureWarning,
        r"`past_key_values` is deprecated and will be removed in version 5\.40",
        r"torch\.nn\.modules\.module",
    ),
)


class _DropMessages(logging.Filter):
    def __init__(self, beginnings: tuple[str, ...]):
        super().__init__()
        self.beginnings = beginnings

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is not ours to judge
            return True
        return not message.startswith(self.beginnings)


def quiet_library_noise() -> None:
    """Drop the known library notices above (by logger or module, and message); every other warning and log
    record is left alone. Call before the libraries are imported: some notices come at import time."""
    for name, beginnings in NOISY_LOGS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(beginnings))
    for category, message, module in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
