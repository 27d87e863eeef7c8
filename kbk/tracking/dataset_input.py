"""The run's data as MLflow dataset inputs (the run page's and the runs table's Dataset column): one input per split
the run reads, `training` and `validation`, named after the data source and its vocabulary, with a digest of the
split's token ids (the same ids give the same digest, whatever cache or file they came from) and the source it was
read from (the corpus folder, the Hugging Face hub, or kbk's synthetic generator)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

#: MLflow's dataset digests are at most 36 characters; 16 hex digits of SHA-256 tell any two corpora apart.
DIGEST_LENGTH = 16


def token_digest(tokens: torch.Tensor) -> str:
    """SHA-256 of the token ids as little-endian int64, cut to `DIGEST_LENGTH` hex digits."""
    ids = tokens.detach().to("cpu", torch.int64).contiguous().numpy()
    return hashlib.sha256(ids.astype("<i8", copy=False).tobytes()).hexdigest()[:DIGEST_LENGTH]


def dataset_name(data: Any) -> str:
    """`<source> vocab <size>`, e.g. `synthetic vocab 256`: what the Dataset column shows before the digest."""
    return f"{data.name} vocab {data.vocab_size}"


def dataset_source(settings: Any, split: str) -> tuple[str, str]:
    """(MLflow source type, source JSON) of `split` ("train" or "validation") under the run's data settings."""
    data = settings.data
    if data.path:
        return "local", json.dumps({"uri": str(data.path)})
    if data.source == "wikitext2":
        from kbk.data.wikitext2 import HUB_CONFIG, HUB_NAME

        return "hugging_face", json.dumps({"path": HUB_NAME, "config_name": HUB_CONFIG, "split": split})
    return "code", json.dumps({"tags": {"kbk.data.source": str(data.source), "kbk.data.seed": str(data.seed)}})


def log_dataset_inputs(tracker: Any, settings: Any, data: Any) -> None:
    """Log `data`'s training and validation splits as the inputs of `tracker`'s MLflow run."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = []
    for context, split, tokens in (("training", "train", data.train), ("validation", "validation", data.val)):
        source_type, source = dataset_source(settings, split)
        profile = json.dumps({"tokens": int(tokens.numel()), "vocabulary": int(data.vocab_size)})
        dataset = Dataset(name=dataset_name(data), digest=token_digest(tokens), source_type=source_type,
                          source=source, profile=profile)
        inputs.append(DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    tracker.log_inputs(inputs)
