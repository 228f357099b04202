"""`kubetune plan FILE`: the memory plan of a FineTuneJob, printed per strategy, without downloading weights
(only the model's config.json, fetched with the user's own credentials, or given with --config). Exit 0 when it
fits or no GPU memory is known, 1 when it does not fit, 2 when the model cannot be planned."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def run_plan(args: argparse.Namespace) -> int:
    from kubetune.api.credentials import ROLE_MODEL
    from kubetune.api.validation import SpecError
    from kubetune.manifests import ManifestFileError, load_job
    from kubetune_trainer import plan
    from kubetune_trainer.errors import TrainerError

    try:
        job = load_job(args.file, args.name)
        spec = job.spec.resolved()
        if args.nodes is not None:
            spec = spec.model_copy(update={"nodes": args.nodes})
        if args.config:
            config = json.loads(Path(args.config).read_text(encoding="utf-8"))
        else:
            from kubetune_trainer.sources import fetch_config

            with tempfile.TemporaryDirectory() as tmp:
                config = fetch_config(spec.model.uri, Path(tmp), role=ROLE_MODEL, spec=spec)
        memory = plan.bytes_of(args.gpu_memory if args.gpu_memory is not None else spec.resources.gpu_memory)
        result = plan.plan(spec, config, gpus_per_node=args.gpus, gpu_memory=memory)
    except (SpecError, ManifestFileError) as err:
        print(f"kubetune plan: {args.file}: {err}", file=sys.stderr)
        return 2
    except (OSError, ValueError, TrainerError) as err:
        print(f"kubetune plan: {err}", file=sys.stderr)
        return 2
    for line in plan.describe(result):
        print(line)
    return 1 if result.chosen.fits is False else 0
