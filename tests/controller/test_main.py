"""`kubetune operator`'s start-up: an identity that works for any uid."""

from __future__ import annotations

import getpass

import pytest

from kubetune.controller import main


def test_identity_needs_no_passwd_entry(monkeypatch: pytest.MonkeyPatch):
    # The image runs as uid 65532, which a slim base's /etc/passwd does not list: getuser() raises there.
    def no_passwd_entry() -> str:
        raise KeyError("getpwuid(): uid not found: 65532")

    monkeypatch.setattr(getpass, "getuser", no_passwd_entry)
    monkeypatch.delenv("POD_NAME", raising=False)
    monkeypatch.delenv("POD_ID", raising=False)
    identity = main.operator_identity()
    assert identity and "/" in identity

    monkeypatch.setenv("POD_NAME", "kubetune-operator-5d9f7-abcde")
    assert main.operator_identity() == "kubetune-operator-5d9f7-abcde"
