"""One progress display: a real tiny `kubetune run` (qlora, 6 steps, eval and a checkpoint every 3) read back as
a pipe gives it (a pod's log) and as a terminal shows it (a pseudo-terminal), with transformers' own bar and
printed dicts gone, the known library notices filtered by name and message, and other warnings still shown."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

UNKNOWN_WARNING = "a library notice kubetune does not know"
UNKNOWN_LOG = "a library log line kubetune does not know"
# Known noise, as the libraries print it: the first is bitsandbytes' (on CPUs with AVX512-BF16 only, so the wrapper
# below also sends it through the same logger); the second comes for real from peft reading the deprecated alias.
FILTERED = ("Failed to load CPU gemm_4bit_forward from kernels-community", "`is_gradient_checkpointing` is deprecated")
# transformers' own console output: the dict PrinterCallback/ProgressCallback print, and ProgressCallback's bar
# (no description, total = the run's 6 steps).
TRANSFORMERS_DICT = re.compile(r"\{'(loss|eval_loss|train_runtime)': ")
TRANSFORMERS_BAR = re.compile(r"(^|\r)\s*\d+%\|[^|\n]*\| \d+/6 \[")

# Runs `kubetune run` after wrapping trainer_setup.prepare_trainer, which every recipe calls on its Trainer, so that
# the run also meets a warning and a log record of an unknown library, and the bitsandbytes notice where this CPU does
# not print it itself. The wrap happens inside the run (entrypoint.train), so the libraries are imported when a real
# `kubetune run` imports them: after the console is set up.
WRAPPER = textwrap.dedent(
    """
    import logging, sys, warnings
    import kubetune_trainer.entrypoint as entrypoint
    from kubetune.cli import main

    def prepare_trainer_with_noise(original):
        def prepare_trainer(trainer, spec, *args, **kwargs):
            warnings.warn({unknown_warning!r}, UserWarning)
            logging.getLogger("somelib").warning({unknown_log!r})
            logging.getLogger("bitsandbytes.backends.cpu.ops").warning(
                "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
                "`pip install kernels` and the kernels >= 0.11.1", "No module named 'kernels'")
            return original(trainer, spec, *args, **kwargs)
        return prepare_trainer

    train = entrypoint.train

    def train_with_noise(ctx):
        import kubetune_trainer.trainer_setup as setup
        setup.prepare_trainer = prepare_trainer_with_noise(setup.prepare_trainer)
        return train(ctx)

    entrypoint.train = train_with_noise
    assert "transformers" not in sys.modules
    sys.exit(main(["run", sys.argv[1], "--output", sys.argv[2]]))
    """
).format(unknown_warning=UNKNOWN_WARNING, unknown_log=UNKNOWN_LOG)


@pytest.fixture(scope="module")
def console_job(tiny_llama_dir, tmp_path_factory):
    import yaml

    from kubetune_trainer.tiny import sample_corpus

    folder = tmp_path_factory.mktemp("console")
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in sample_corpus(200, seed=3)))
    manifest = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "console"},
        "spec": {
            "technique": "qlora",
            "model": {"uri": f"file://{tiny_llama_dir}"},
            "datasets": [{"name": "s", "uri": f"file://{data}", "format": "text", "evalFraction": 0.1}],
            "hyperparameters": {
                "maxSteps": 6,
                "batchSize": 4,
                "maxSeqLength": 64,
                "precision": "fp32",
                "packing": True,
            },
            "evaluation": {"everySteps": 3},
            "output": {"checkpointEverySteps": 3},
        },
    }
    job = folder / "job.yaml"
    job.write_text(yaml.safe_dump(manifest, sort_keys=False))
    wrapper = folder / "run_noisy.py"
    wrapper.write_text(WRAPPER)
    return job, wrapper


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    for key in ("KUBETUNE_FTJ_NAME", "KUBETUNE_FTJ_NAMESPACE", "COLUMNS", "LINES"):
        env.pop(key, None)
    return env


def _records(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def _render(raw: str) -> list[str]:
    """The lines a terminal ends up showing: a carriage return moves back to the start of the line, and what is
    written next overwrites what was there."""
    screen = []
    for segment in raw.split("\n"):
        line: list[str] = []
        column = 0
        for char in segment:
            if char == "\r":
                column = 0
                continue
            if column < len(line):
                line[column] = char
            else:
                line.append(char)
            column += 1
        screen.append("".join(line).rstrip())
    return screen


def _run_in_terminal(argv: list[str], columns: int = 160) -> str:
    """Run `argv` with a pseudo-terminal of `columns` columns as its stdin, stdout and stderr; all it printed."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    proc = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal, env=_env(), start_new_session=True)
    os.close(terminal)
    chunks = []
    while True:
        try:
            data = os.read(controller, 65536)
        except OSError:  # EIO: the child closed its side
            break
        if not data:
            break
        chunks.append(data)
    os.close(controller)
    assert proc.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")[-4000:]
    return b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")  # the terminal's own newline mapping


def _assert_no_noise(text: str) -> None:
    for notice in FILTERED:
        assert notice not in text, notice
    assert UNKNOWN_WARNING in text and UNKNOWN_LOG in text  # everything else still shows
    assert not TRANSFORMERS_DICT.search(text), TRANSFORMERS_DICT.search(text)
    assert not TRANSFORMERS_BAR.search(text), TRANSFORMERS_BAR.search(text)


def test_without_a_terminal_each_logged_step_is_one_line(console_job, tmp_path):
    job, wrapper = console_job
    output = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(wrapper), str(job), f"file://{output}/"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=_env(),
        timeout=300,
    )
    text = proc.stdout.decode()
    assert proc.returncode == 0, text[-4000:]
    _assert_no_noise(text)
    progress = [line for line in text.splitlines() if re.match(r"\[kubetune\] \[[#-]{20}\] +\d+% step \d+/6 ", line)]
    # While training nothing is redrawn in place: a log collector gets whole lines. (Before it, loading the model and
    # preparing the data draw their own bars once.)
    assert "\r" not in text[text.index(progress[0]) :]
    records = _records(output)
    # One line per record metrics.jsonl got (each logged step, each evaluation), in order, with its numbers.
    assert [int(re.search(r"step (\d+)/6", line).group(1)) for line in progress] == [r["step"] for r in records]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    first_loss = next(r["loss"] for r in records if "loss" in r)
    assert f"loss {first_loss:.4f}" in progress[0]
    assert any("eval_loss" in line for line in progress)
    assert "[kubetune] checkpoint step-3 complete" in text


def test_in_a_terminal_one_bar_is_redrawn_in_place(console_job, tmp_path):
    job, wrapper = console_job
    output = tmp_path / "out"
    raw = _run_in_terminal([sys.executable, str(wrapper), str(job), f"file://{output}/"])
    _assert_no_noise(raw)
    records = _records(output)
    steps = sorted({r["step"] for r in records})
    # The bar is drawn again for every logged step, on the same line (a carriage return, no new line).
    draws = re.findall(r"\r\[kubetune\] +(\d+)%\|[^|\n]*\| step (\d+)/6 ([^\r\n]*)", raw)
    assert sorted({int(step) for _, step, _ in draws}) == steps
    assert any(int(pct) == 100 and "loss" in rest for pct, step, rest in draws if step == "6")

    screen = _render(raw)
    bars = [line for line in screen if re.match(r"\[kubetune\] +\d+%\|", line)]
    assert len(bars) == 1 and "| step 6/6 " in bars[0], bars  # one bar, left at its last state
    assert len(bars[0]) <= 160  # cut at the terminal's width, never wrapped onto a second line
    # What printed while the bar was shown sits on lines of its own above it: nothing ran into anything.
    assert not [line for line in screen if "[kubetune]" in line[1:]], [
        line for line in screen if "[kubetune]" in line[1:]
    ]
    assert "[kubetune] checkpoint step-3 complete: " + f"file://{output}/checkpoints/step-3/ (1 kept)" in screen
    assert any(line.startswith("[kubetune] INFO checkpoint step-3 uploaded") for line in screen)
    assert any(line.endswith(f"UserWarning: {UNKNOWN_WARNING}") for line in screen)
    assert UNKNOWN_LOG in screen
    assert screen.index(bars[0]) < screen.index(f"[kubetune] final model: file://{output}/final/")
