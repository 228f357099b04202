"""Fetch a model folder or data files named by a URI into a local folder, by scheme (kubetune_trainer.schemes
says which source module serves which scheme: file.py, objectstore.py, huggingface.py).

`fetch_model` returns a local Hugging Face model folder; `fetch_data_files` returns local data files
(one file, or every data file under a prefix). hf://datasets URIs are read by `data.py` through
`datasets.load_dataset` instead (the library already caches and streams them).

Where the platform's model cache holds a role's source (KUBETUNE_<ROLE>_CACHE_URI, set by the operator to a
complete entry), `fetch_model`, `fetch_config` and `cached_dataset_folder` read that entry instead
(kubetune_trainer.cache) and the source is never contacted.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kubetune.api.credentials import ROLE_REWARD_MODEL
from kubetune_trainer import cache
from kubetune_trainer.errors import UserError
from kubetune_trainer.layout import COMPLETE_MARKER
from kubetune_trainer.schemes import scheme_of, source_module

if TYPE_CHECKING:
    from kubetune.api.v1alpha1 import Spec

# Weights stored with pickle, which runs code when loaded: only fetched and loaded with spec.model.allowPickle.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
PICKLE_PATTERNS = tuple(f"*{suffix}" for suffix in PICKLE_SUFFIXES)


def is_pickled(name: str) -> bool:
    return name.lower().endswith(PICKLE_SUFFIXES)


def fetch_model(
    uri: str, dest: Path, *, role: str, spec: Spec | None, allow_pickle: bool = False, trust_remote_code: bool = False
) -> Path:
    """A local model folder for `uri`: used in place (file://) or downloaded into `dest` once, its completion
    marker written last so another local rank, or a later attempt on the same disk, finds it whole."""
    parsed, scheme = scheme_of(uri, "model.uri")
    entry = cache.entry_for_role(role)
    if entry:
        what = "spec.rlhf.rewardModel.uri" if role == ROLE_REWARD_MODEL else "spec.model.uri"
        model_dir = cache.fetch_cached(
            entry, uri, dest, what=what, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code
        )
        return check_remote_code(model_dir, uri, trust_remote_code)
    source = source_module(scheme)
    kwargs = dict(role=role, spec=spec, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    if scheme.in_place:
        return check_remote_code(source.fetch_model(parsed, uri, dest, **kwargs), uri, trust_remote_code)
    if not (dest / COMPLETE_MARKER).exists():
        source.fetch_model(parsed, uri, dest, **kwargs)
        (dest / COMPLETE_MARKER).touch()
    return check_remote_code(dest, uri, trust_remote_code)


def fetch_config(uri: str, dest: Path, *, role: str, spec: Spec | None) -> dict:
    """The model's config.json alone (the memory plan needs its shape before any weight is downloaded)."""
    import json

    parsed, scheme = scheme_of(uri, "model.uri")
    entry = cache.entry_for_role(role)
    if entry:
        path = cache.read_file(entry, "config.json", dest, what="spec.model.uri", uri=uri)
    else:
        path = source_module(scheme).fetch_config(parsed, uri, dest, role=role, spec=spec)
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"spec.model.uri: {uri} has no readable config.json ({err})") from None


def check_remote_code(model_dir: Path, uri: str, trust_remote_code: bool) -> Path:
    """A model whose architecture transformers does not know loads only by running the repository's
    own Python code (config.json `auto_map`): refuse that, naming the field, unless it is trusted.
    Models transformers knows load with its own classes and any `auto_map` is ignored."""
    import json

    if trust_remote_code:
        return model_dir
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return model_dir  # the loader reports a missing or broken config with its own message
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    if config.get("auto_map") and model_type not in CONFIG_MAPPING:
        classes = ", ".join(sorted(str(v) for v in config["auto_map"].values())[:3])
        raise UserError(
            f"spec.model.trustRemoteCode: {uri} (model_type {model_type!r}) needs its own Python code to load "
            f"({classes}); kubetune does not run code from a model repository unless spec.model.trustRemoteCode "
            "is true, and only when you trust its authors"
        )
    return model_dir


def fetch_data_files(uri: str, dest: Path, *, role: str, spec: Spec | None, what: str) -> list[Path]:
    """Local copies of a data file or of every data file under a prefix (in place for file://)."""
    parsed, scheme = scheme_of(uri, what)
    if scheme.data_by_library:
        raise UserError(
            f"{what}: {uri} is not a file or a prefix of files (hf:// datasets are read with datasets.load_dataset)"
        )
    return source_module(scheme).fetch_data(parsed, uri, dest, role=role, spec=spec, what=what)


def cached_dataset_folder(uri: str, dest: Path, *, role: str, what: str) -> Path | None:
    """A local folder with an hf://datasets repository from the platform's model cache, for the role whose entry
    the operator set; None when it set none (the datasets library then reads the Hub)."""
    entry = cache.entry_for_role(role)
    if not entry:
        return None
    return cache.fetch_cached(entry, uri, dest, what=what)
