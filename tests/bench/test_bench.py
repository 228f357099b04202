"""The bench scripts run in their CPU/tiny form and print their tables with sane numbers.

These check that the scripts work (CI), not how fast anything is: no timing gates. The optimised
training paths' correctness is tested in tests/trainer/test_speed.py.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def table_rows(text: str, header_start: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    body = [[c.strip() for c in line.strip("|").split("|")] for line in lines[start + 2 :]]
    return header, body


def test_trainer_throughput_tiny(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("the tiny form is the CPU form; on a GPU run bench/gpu_run.sh")
    bench = load("trainer_throughput")
    out = tmp_path / "rows.json"
    assert bench.main(["--tiny", "--in-process", "--steps", "3", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    header, body = table_rows(printed, "| row |")
    assert header == bench.COLUMNS
    names = [cells[0] for cells in body]
    assert names == [f"{t}/{p}" for t in ("full", "lora", "qlora", "8b-qlora") for p in ("baseline", "kubetune")]
    result = json.loads(out.read_text())
    vocab = bench.SHAPES["tiny"]["vocab_size"]
    for row in result["rows"]:
        assert not row["error"], row
        assert row["tokens_per_s"] > 0
        # random weights: the loss sits near ln(vocab) on both paths
        assert abs(row["loss"] - math.log(vocab)) < 0.5, row
        if row["path"] == "kubetune":
            assert row["notes"].startswith("packed, sdpa, no liger"), row["notes"]  # CPU: Liger is a no-op
    assert set(result["ratios"]) == {"full/kubetune", "lora/kubetune", "qlora/kubetune", "8b-qlora/kubetune"}
    assert all(speed > 0 for speed, _ in result["ratios"].values())
    assert "ratios (kubetune / baseline)" in printed


def test_flops_per_token_matches_the_llama_1b_count():
    bench = load("trainer_throughput")
    # Llama-3.2-1B: 1.236e9 parameters with the tied embedding counted once; matmul parameters are the
    # same number (the lm_head matmul uses the embedding), so 6N ~ 7.4e9 FLOPs per token + attention.
    docs = [[1] * 1023]  # one document of 1024 tokens
    flops = bench.flops_per_token("1b", docs)
    attention = 6 * 16 * 2048 * 1024
    assert flops - attention == pytest.approx(6 * 1.236e9, rel=0.01)


def test_checkpoint_overhead_tiny(tmp_path, capsys):
    bench = load("checkpoint_overhead")
    out = tmp_path / "ckpt.json"
    assert bench.main(["--steps", "20", "--every", "10", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    header, body = table_rows(printed, "| variant |")
    assert header[:5] == ["variant", "steps", "checkpointEverySteps", "checkpoints uploaded", "wall s"]
    result = json.loads(out.read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert rows["without"]["checkpoints"] == []
    assert rows["with"]["checkpoints"] == [10, 20]  # uploaded to S3 with their completion markers
    assert all(r["wall_s"] > 0 for r in rows.values())
    assert bench.default_interval() == 200


def test_operator_scale_small(tmp_path, capsys):
    bench = load("operator_scale")
    out = tmp_path / "op.json"
    assert bench.main(["--jobs", "30", "--namespaces", "3", "--timeout", "60", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    header, body = table_rows(printed, "| metric |")
    assert header == ["metric", "value"]
    assert {cells[0] for cells in body} >= {
        "every child Job exists (s)",
        "create -> Job p99 (s)",
        "operator peak RSS (MiB)",
        "operator API calls per job",
    }
    result = json.loads(out.read_text())
    assert result["missing"] == 0 and result["jobs"] == 30
    assert (
        0
        <= result["latency_p50_s"]
        <= result["latency_p99_s"]
        <= result["latency_max_s"]
        <= result["all_jobs_exist_s"] + 0.05
    )
    assert 0 <= result["status_p50_s"] <= result["status_p99_s"] <= result["all_statuses_s"] + 0.05
    assert result["latency_p50_s"] <= result["status_p50_s"]  # a FineTuneJob's status names its Job: after it
    assert result["operator_peak_rss_mib"] > 10 and result["operator_cpu_s"] > 0 and result["users_cpu_s"] > 0
    assert result["api_calls_per_job"] >= 2  # at least: create the Job, write status
    assert result["job_creates"] == 30  # one Job per FineTuneJob, no duplicate creates
    # Nothing before the Job: the reporter's account and token Secret come with its grant, once the pods exist (the
    # burst has none).
    assert not {"create serviceaccounts", "create secrets"} & set(result["calls_by_verb"]), result["calls_by_verb"]
    # A restart over jobs in every phase writes nothing; an idle operator over a finished history neither writes nor
    # lists every FineTuneJob each resync (one metadata-only list per 10 resync periods at most).
    restart, history = result["restart"], result["history"]
    assert restart["calls"] > 0 and restart["mutating_calls"] == 0, restart["mutating_by_verb"]
    assert restart["statuses_changed"] == 0 and restart["events_written"] == 0
    assert history["mutating_calls"] == 0 and history["startup_mutating_calls"] == 0
    lists = history["calls_per_min_by_verb"].get("list finetunejobs", 0) * history["window_s"] / 60
    assert lists <= history["window_s"] / history["resync_s"] / 10 + 1, history["calls_per_min_by_verb"]


def test_operator_scale_with_the_users_account(tmp_path, capsys):
    """The users' pods on an account of theirs, which the operator's policy allows: every job gets its Job (a policy
    the flag did not set would refuse them all) and nothing else first."""
    bench = load("operator_scale")
    out = tmp_path / "op.json"
    argv = ["--jobs", "10", "--namespaces", "2", "--no-restart", "--no-history", "--json", str(out)]
    assert bench.main([*argv, "--pod-service-account", "ml-identity"]) == 0
    assert "their pods running as ServiceAccount ml-identity" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["missing"] == 0 and result["job_creates"] == 10
    assert not {"create serviceaccounts", "create secrets"} & set(result["calls_by_verb"]), result["calls_by_verb"]


def test_operator_scale_refuses_an_account_name_kubernetes_would_refuse(capsys):
    with pytest.raises(SystemExit) as exited:
        load("operator_scale").main(["--jobs", "5", "--pod-service-account", "Bad_Name"])
    assert exited.value.code == 2
    assert "--pod-service-account: 'Bad_Name' is not a ServiceAccount name" in capsys.readouterr().err


def test_kube_clients_small(capsys):
    """Each installed client, the operator's and the bare floor among them, makes its calls against the emulator
    (a failed call fails the run) and gets a CPU figure per call."""
    bench = load("kube_clients")
    assert bench.main(["--calls", "30", "--rounds", "1"]) == 0
    _, body = table_rows(capsys.readouterr().out, "| client |")
    per_call = {cells[0]: float(cells[1]) for cells in body}
    assert set(per_call) >= {"kubetune (aiohttp, controller/kube.py)", "bare HTTP/1.1 on asyncio (the floor)"}
    assert all(ms > 0 for ms in per_call.values()), per_call


@pytest.mark.slow
def test_memory_plan_exact_parts_on_the_cpu(capsys):
    """The plan's weights, gradients and optimizer state equal what each rank holds, in ddp and in fsdp."""
    assert load("memory_plan").cpu(2) == 0
    out = capsys.readouterr().out
    assert "largest difference of a sum: 0.00%" in out
    assert out.count("fsdp") == 6 and out.count("ddp") == 6


def test_plan_table_prints_every_technique(capsys, monkeypatch):
    from kubetune.api.constants import Technique

    monkeypatch.setattr(sys, "argv", ["plan_table.py"])
    load("plan_table").main()
    out = capsys.readouterr().out
    for technique in Technique:
        assert f"| 8B | {technique.value} |" in out
    assert "| 8B | full | - | - | fsdp " in out  # 8B full fine-tuning needs sharding over 4 GPUs of 80 GiB


@pytest.mark.parametrize("options", [[], ["--checkpointing", "--offload"]])
def test_the_strategy_tables_of_the_docs_are_what_plan_table_prints(options, capsys, monkeypatch):
    """docs/techniques.md shows bench/plan_table.py's output verbatim: a change to the plan regenerates it."""
    monkeypatch.setattr(sys, "argv", ["plan_table.py", *options])
    load("plan_table").main()
    table = capsys.readouterr().out.strip()
    docs = (BENCH.parent / "docs" / "techniques.md").read_text()
    assert table in docs, f"regenerate docs/techniques.md's table with: python bench/plan_table.py {' '.join(options)}"
