"""`make demo` (python -m kubetune_trainer.demo): the results are where the README says, and the fine-tuned model
writes text a user can read."""

from __future__ import annotations

import re
from pathlib import Path

from kubetune_trainer.tiny import sample_corpus

ROOT = Path(__file__).resolve().parents[2]


def test_demo_results_are_where_the_readme_says_and_the_model_writes_text(tmp_path, capsys):
    from kubetune_trainer import demo

    out = tmp_path / "demo-output"
    assert demo.main(["--out", str(out)]) == 0
    printed = capsys.readouterr().out

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Demo") : readme.index("## Quickstart")]
    paths = set(re.findall(r"`demo-output/([^`]*)`", section))
    assert {"output/", "output/final/", "output/metrics.jsonl", "loss.png", "finetunejob.yaml"} <= paths
    for relative in paths:
        assert (out / relative).exists(), f"README names demo-output/{relative}; the demo did not write it"
    assert (out / "output" / "final" / "_COMPLETE").exists()

    losses = [float(x) for x in re.search(r"\[demo\] loss ([\d.]+) -> ([\d.]+)", printed).groups()]
    assert losses[1] < losses[0] / 3
    written = re.search(r"\[demo\] the fine-tuned model writes: '(.*)'", printed)[1]
    vocabulary = {word.strip(".,") for text in sample_corpus(400, seed=11, cased=True) for word in text.split()}
    words = [word.strip(".,") for word in written.split()]
    assert written.startswith(demo.PROMPT + " ") and written[0].isupper()
    assert len(words) >= 5 and set(words) <= vocabulary, written

    assert demo.main(["--out", str(out), "--prompt", "Once upon a time"]) == 0
    continued = capsys.readouterr().out.strip()
    assert continued.startswith("Once upon a time ") and len(continued) > len("Once upon a time ") + 3
