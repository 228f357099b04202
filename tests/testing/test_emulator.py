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
from kubetune.testing.harness import wait_for


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


@pytest.fixture(scope="module")
def core():
    import kubernetes

    emulator = Emulator().start()
    try:
        with kubernetes.client.ApiClient(emulator.client_configuration(ADMIN_TOKEN)) as client:
            yield emulator, kubernetes.client.CoreV1Api(client)
    finally:
        emulator.stop()


def _pod(name: str, account: str | None = None) -> dict:
    spec = {"containers": [{"name": "c", "image": "busybox"}]}
    return {"metadata": {"name": name}, "spec": spec | ({"serviceAccountName": account} if account else {})}


def test_every_namespace_has_a_default_account_and_a_pod_needs_its_account(core):
    """kube-controller-manager's serviceaccounts controller and the ServiceAccount admission plugin, as ported."""
    import kubernetes

    emulator, api = core
    api.create_namespace({"metadata": {"name": "accounts"}})
    assert api.read_namespaced_service_account("default", "accounts").metadata.name == "default"
    made = api.create_namespaced_pod("accounts", _pod("plain"))
    assert made.spec.service_account_name == "default"  # a pod without an account gets `default`
    with pytest.raises(kubernetes.client.ApiException) as refused:
        api.create_namespaced_pod("accounts", _pod("lost", "missing"))
    assert refused.value.status == 403
    message = json.loads(refused.value.body)["message"]
    assert message == (
        'pods "lost" is forbidden: error looking up service account accounts/missing: '
        'serviceaccount "missing" not found'
    )
    api.create_namespaced_service_account("accounts", {"metadata": {"name": "missing"}})
    assert api.create_namespaced_pod("accounts", _pod("found", "missing")).spec.service_account_name == "missing"


def test_a_token_secret_gets_a_token_of_its_account_valid_while_both_exist(core):
    """The token controller fills a kubernetes.io/service-account-token Secret, deletes one whose account is missing
    or goes; kube-apiserver takes its token as the account while the Secret and the account are there."""
    import base64

    import kubernetes

    emulator, api = core
    api.create_namespace({"metadata": {"name": "tokens"}})

    def token_secret(name: str, account: str) -> dict:
        annotations = {"kubernetes.io/service-account.name": account}
        return {"metadata": {"name": name, "annotations": annotations}, "type": "kubernetes.io/service-account-token"}

    def secret_or_none(name: str):
        try:
            return api.read_namespaced_secret(name, "tokens")
        except kubernetes.client.ApiException as err:
            assert err.status == 404
            return None

    api.create_namespaced_secret("tokens", token_secret("orphan", "nobody"))
    wait_for(lambda: secret_or_none("orphan") is None, what="the Secret of a missing account to be deleted")

    account = api.create_namespaced_service_account("tokens", {"metadata": {"name": "reporter"}})
    api.create_namespaced_secret("tokens", token_secret("reporter-token", "reporter"))
    secret = wait_for(
        lambda: (s := secret_or_none("reporter-token")) and s.data and s.data.get("token") and s, what="a token"
    )
    assert secret.metadata.annotations["kubernetes.io/service-account.uid"] == account.metadata.uid
    assert base64.b64decode(secret.data["namespace"]).decode() == "tokens"
    assert base64.b64decode(secret.data["ca.crt"]).decode() == open(emulator.ca_file).read()
    token = base64.b64decode(secret.data["token"]).decode()

    def whoami() -> int:
        with kubernetes.client.ApiClient(emulator.client_configuration(token)) as client:
            try:
                kubernetes.client.CoreV1Api(client).list_namespaced_pod("tokens")
            except kubernetes.client.ApiException as err:
                return err.status
        return 200

    assert whoami() == 403  # authenticated as the account, which nothing grants
    assert [c.user for c in emulator.calls() if c.namespace == "tokens" and c.resource == "pods"] == [
        "sa:tokens:reporter"
    ]
    api.delete_namespaced_service_account("reporter", "tokens")
    wait_for(lambda: secret_or_none("reporter-token") is None, what="the token Secret to go with its account")
    assert whoami() == 401
    # A namesake account made again does not bring the token back.
    api.create_namespaced_service_account("tokens", {"metadata": {"name": "reporter"}})
    assert whoami() == 401
