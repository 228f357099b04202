"""What the fault tests share besides fixtures: the seed, the suite's S3 credentials, clients, env.

(A module of its own: `from conftest import ...` would find whichever suite's conftest loaded first.)
"""

from __future__ import annotations

import os

# One seed for every random choice of the suite (kill steps, proxy faults, API faults): set
# KUBETUNE_FAULT_SEED to replay a failure; the summary prints the seed used.
SEED = int(os.environ.get("KUBETUNE_FAULT_SEED", "20261126"))
S3_KEY_ID = "kubetune-fault-key"
S3_SECRET = "kubetune-fault-secret-value"


def s3_client(endpoint: str):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_KEY_ID,
        aws_secret_access_key=S3_SECRET,
        region_name="us-east-1",
    )


def s3_env(endpoint: str, **extra) -> dict[str, str]:
    """The environment of a trainer process talking to `endpoint` (with the suite's credentials)."""
    env = dict(os.environ)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "HF_TOKEN"):
        env.pop(key, None)
    env.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID=S3_KEY_ID,
        AWS_SECRET_ACCESS_KEY=S3_SECRET,
        AWS_DEFAULT_REGION="us-east-1",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        KUBETUNE_S3_MAX_ATTEMPTS="5",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
    )
    env.update(extra)
    return env
