"""A user's mistake is never an internal error: an early-stopping metric the run never reports and a seed beyond
2^32 used to fail at the first evaluation (possibly hours in) with exit 30, an internal error that is retried. Now the
spec is refused when it is read, before anything is loaded or written: exit 10 (a user error, not retried) with the
field in the one-line reason."""

from __future__ import annotations

import pytest
import yaml

from kubetune.api.constants import ExitCode
from kubetune_trainer.entrypoint import main


def job(**spec_changes) -> dict:
    spec = {
        "technique": "lora",
        "objective": "instruction",
        # Nothing at these paths: reaching the model or the data would fail differently.
        "model": {"uri": "file:///no/such/model"},
        "datasets": [{"name": "chat", "uri": "file:///no/such/data.jsonl", "format": "messages", "evalFraction": 0.1}],
    }
    spec.update(spec_changes)
    return {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "mistake"}, "spec": spec}


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"evaluation": {"earlyStopping": {"metric": "eval_accuracy"}}}, "evaluation.earlyStopping.metric"),
        ({"evaluation": {"earlyStopping": {"metric": "eval_chat_loss"}}}, "evaluation.earlyStopping.metric"),
        ({"hyperparameters": {"seed": 2**32}}, "hyperparameters.seed"),
    ],
)
def test_spec_mistakes_exit_10_before_anything_runs(changes, field, tmp_path):
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(job(**changes)))
    log, output = tmp_path / "termination-log", tmp_path / "out"
    rc = main([str(manifest), "--output", f"file://{output}/", "--termination-log", str(log)])
    reason = log.read_text()
    assert rc == ExitCode.USER_ERROR, reason
    assert reason.startswith("UserError:") and field in reason and "\n" not in reason.strip()
    assert "/no/such/" not in reason  # refused for the spec, not for the model or data it never reached
    assert not output.exists()  # nothing was written: the run never started
