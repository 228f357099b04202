"""Which credentials an s3:// request of the trainer is signed with. In a pod the operator made (it sets
KUBETUNE_AMBIENT_CREDENTIALS), a role without a Secret and without ambientCredentials is never signed with what the
environment offers (plain AWS_* variables, a credentials file, the node's instance metadata): its requests go
unsigned. Locally, and for the roles the operator listed, botocore's default chain is used as before.

Each request is caught just before it would be sent (botocore's before-send event), so what is checked is the
Authorization header botocore really computed."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from kubetune.api.credentials import AMBIENT_ROLES_ENV, env_name
from kubetune_trainer.errors import UserError
from kubetune_trainer.storage.s3 import S3Storage


class _NoBody:
    def stream(self, *args, **kwargs):
        return iter(())


def authorization(role: str, monkeypatch, tmp_path, **env: str) -> str | None:
    """The Authorization header of a HEAD request for `role`, with exactly `env` as the credential environment."""
    from botocore.awsrequest import AWSResponse

    for key in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        AMBIENT_ROLES_ENV,
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
    ):
        monkeypatch.delenv(key, raising=False)
    # A credentials file, as a node or an image might carry one; and no instance metadata service within reach.
    credentials = tmp_path / "credentials"
    credentials.write_text("[default]\naws_access_key_id = FILEKEY\naws_secret_access_key = file-secret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    storage = S3Storage.for_role(role, None)
    seen = {}

    def before_send(request, **_):
        seen["authorization"] = request.headers.get("Authorization")
        return AWSResponse(request.url, 200, {}, _NoBody())

    storage._client.meta.events.register("before-send.s3.HeadObject", before_send)
    assert storage.exists("s3://bucket-a/key")
    auth = seen["authorization"]
    return auth.decode() if isinstance(auth, bytes) else auth


def test_a_local_run_uses_the_environments_credentials(monkeypatch, tmp_path):
    assert "Credential=MACHINEKEY/" in authorization(
        "output", monkeypatch, tmp_path, AWS_ACCESS_KEY_ID="MACHINEKEY", AWS_SECRET_ACCESS_KEY="s"
    )
    assert "Credential=FILEKEY/" in authorization("output", monkeypatch, tmp_path)


def test_in_a_pod_a_role_without_credentials_is_never_signed_with_the_environments(monkeypatch, tmp_path):
    # Plain variables and a credentials file are there; the role has no Secret and did not ask for ambient ones.
    assert (
        authorization(
            "output",
            monkeypatch,
            tmp_path,
            **{AMBIENT_ROLES_ENV: "", "AWS_ACCESS_KEY_ID": "NODEKEY", "AWS_SECRET_ACCESS_KEY": "s"},
        )
        is None
    )
    assert authorization("dataset-0", monkeypatch, tmp_path, **{AMBIENT_ROLES_ENV: "model"}) is None


def test_in_a_pod_the_roles_own_secret_signs(monkeypatch, tmp_path):
    own = {env_name("output", "AWS_ACCESS_KEY_ID"): "SECRETKEY", env_name("output", "AWS_SECRET_ACCESS_KEY"): "s"}
    assert "Credential=SECRETKEY/" in authorization(
        "output", monkeypatch, tmp_path, **{AMBIENT_ROLES_ENV: "", "AWS_ACCESS_KEY_ID": "NODEKEY"}, **own
    )


def test_in_a_pod_a_role_listed_as_ambient_uses_the_pods_identity(monkeypatch, tmp_path):
    # The default chain: here the variables an identity webhook or the image provide.
    assert "Credential=PODKEY/" in authorization(
        "output",
        monkeypatch,
        tmp_path,
        **{AMBIENT_ROLES_ENV: "model,output", "AWS_ACCESS_KEY_ID": "PODKEY", "AWS_SECRET_ACCESS_KEY": "s"},
    )


def test_an_anonymous_refusal_says_why_there_were_no_credentials(monkeypatch):
    monkeypatch.setenv(AMBIENT_ROLES_ENV, "")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    storage = S3Storage.for_role("output", None)
    denied = ClientError({"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "GetObject")
    with pytest.raises(UserError, match="no credentialsSecret and does not ask for ambientCredentials"):
        storage._fail(denied, "s3://bucket-a/key")
