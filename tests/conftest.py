"""Test-wide settings: one CPU thread (2-core machines; torch with 2 threads ran 20-60x slower on
tiny models while another process was busy), no hub access, no stray credentials."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
for _key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "HF_TOKEN", "AWS_PROFILE"):
    os.environ.pop(_key, None)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A tiny Llama model folder (config, safetensors weights, tokenizer with a chat template), built offline by
    `kubetune_trainer.tiny`, once per session. Treat it as read-only; copy it before writing into it."""
    import torch

    torch.set_num_threads(1)
    from kubetune_trainer.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
