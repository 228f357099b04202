"""URI schemes: what each one can be in a run, and which code does it. `kubetune.api.uris` parses; this
registry says, per scheme, where its storage (outputs, checkpoints, and the objects an object-store source
reads) and its sources (a model folder, data files) are. `storage.get_storage` and `sources.fetch_*` ask it.

A new object store (gs://, say) is a Storage subclass in storage/, one line here (`Scheme.object_store(...)`)
and its keys in kubetune.api.credentials; its sources are the generic object-store ones.

fsspec was considered and not taken: its S3 backend (s3fs) pins aiobotocore, which pins botocore to a narrow
range that fights boto3's; the trainer needs only eight operations per store, and completion markers, retries
and the user-vs-infrastructure error split are ours to decide in any case.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from kubetune.api.uris import UriError, parse_uri
from kubetune_trainer.errors import UserError

OBJECT_STORE_SOURCE = "kubetune_trainer.sources.objectstore"


@dataclass(frozen=True)
class Scheme:
    storage: str | None  # "module:callable(role, spec) -> Storage"; None: nothing can be written there
    source: str  # module with fetch_model(...) and, unless data_by_library, fetch_data(...)
    in_place: bool = False  # sources are read where they are (nothing copied, no completion marker)
    data_by_library: bool = False  # data is read by the datasets library (hf://datasets/...)
    adapter_base: str = "path"  # how a saved adapter names its base: "repo" (hub id), "uri" or "path" (in place)

    @classmethod
    def object_store(cls, storage: str) -> Scheme:
        return cls(storage=storage, source=OBJECT_STORE_SOURCE, adapter_base="uri")


SCHEMES: dict[str, Scheme] = {
    "file": Scheme(
        storage="kubetune_trainer.storage.file:FileStorage.for_role",
        source="kubetune_trainer.sources.file",
        in_place=True,
    ),
    "s3": Scheme.object_store("kubetune_trainer.storage.s3:S3Storage.for_role"),
    "hf": Scheme(
        storage=None, source="kubetune_trainer.sources.huggingface", data_by_library=True, adapter_base="repo"
    ),
}


def scheme_of(uri: str, what: str):
    """(the parsed URI, its Scheme); UserError naming `what` for a URI that cannot be used."""
    try:
        parsed = parse_uri(uri)
    except UriError as err:
        raise UserError(f"{what}: {err}") from None
    return parsed, SCHEMES[parsed.scheme]


def resolve(reference: str) -> Any:
    """ "package.module:attr.attr" -> the object (imported on first use: boto3 costs a second)."""
    module, _, attrs = reference.partition(":")
    target: Any = importlib.import_module(module)
    for attr in filter(None, attrs.split(".")):
        target = getattr(target, attr)
    return target


def source_module(scheme: Scheme):
    return importlib.import_module(scheme.source)
