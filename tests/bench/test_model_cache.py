"""bench/model_cache.py in its small form: a few jobs of one small model, with the cache and without it, through the
real operator, the Hub double, moto and real processes. What it counts is checked; how fast anything was is not (no
timing gates here: the machine is shared)."""

from __future__ import annotations

import json

import pytest

from tests.bench.test_bench import load, table_rows


@pytest.mark.timeout(600)
def test_model_cache_bench_small(tmp_path, capsys):
    bench = load("model_cache")
    out = tmp_path / "cache.json"
    assert bench.main(["--jobs", "3", "--model-mib", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    header, body = table_rows(printed, "| phase |")
    assert header[:3] == ["phase", "jobs", "Hub requests per file"]
    assert [row[0] for row in body] == ["with the cache", "without the cache"]
    cached, direct = json.loads(out.read_text())["rows"]
    files = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    # The Hub serves each file once with the cache (the population), once per job without it.
    assert cached["hub_requests_per_file"] == dict.fromkeys(files, 1)
    assert direct["hub_requests_per_file"] == dict.fromkeys(files, 3)
    assert cached["hub_bytes"] == cached["model_bytes"] and direct["hub_bytes"] == 3 * direct["model_bytes"]
    # The store holds the entry (its files, the marker, the last use) and served it to each pod; without the cache
    # nothing more was read from it.
    assert cached["model_bytes"] < cached["store_bytes_stored"] < cached["model_bytes"] + 64 * 1024
    assert cached["store_bytes_read"] >= 3 * cached["model_bytes"]
    assert direct["store_bytes_read"] == 0
    for row in (cached, direct):
        assert len(row["ready_s"]) == 3 and all(t > 0 for t in row["ready_s"])
        assert row["ready_first_s"] <= row["ready_median_s"] <= row["ready_last_s"]
    verdict = json.loads(out.read_text())["verdict"]
    assert verdict[0].startswith("ok: with the cache") and verdict[1].startswith("ok: without it")
