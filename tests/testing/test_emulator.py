"""kubetune.testing.emulator's own helpers: what the API emulator reads and stamps."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import time
import urllib.error
import urllib.request

import pytest

from kubetune.testing.emulator import ADMIN_TOKEN, Emulator, load_json, now_rfc3339


def test_request_bodies_are_read_as_the_standard_library_reads_them():
    assert load_json(b'{"a": [1, 2.5, "x", null, true]}') == {"a": [1, 2.5, "x", None, True]}
    # orjson refuses an integer beyond 64 bits; the standard library's answer stands in.
    assert load_json(b'{"big": 18446744073709551616}') == {"big": 2**64}
    with pytest.raises(json.JSONDecodeError):  # malformed: the standard library's error (the emulator answers 400)
        load_json(b'{"a": ')


def test_timestamps_are_whole_seconds_of_now_in_utc():
    before = int(time.time())
    stamp = now_rfc3339()
    after = int(time.time())
    parsed = dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
    assert before <= parsed <= after


def test_a_body_that_is_not_json_is_answered_400_as_the_api_server_does():
    emulator = Emulator().start()
    try:
        request = urllib.request.Request(
            f"{emulator.url}/api/v1/namespaces",
            data=b'{"apiVersion": "v1", "kind": ',
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, context=ssl.create_default_context(cafile=emulator.ca_file), timeout=10)
        assert answer.value.code == 400
        assert json.loads(answer.value.read())["reason"] == "BadRequest"
    finally:
        emulator.stop()
