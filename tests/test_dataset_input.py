"""The run's data as MLflow dataset inputs (the Dataset column): its training and validation splits, named after the
source and vocabulary, with a digest of their token ids and the source they were read from."""

from __future__ import annotations

import hashlib
import json

import torch
from conftest import TINY, compose_kbk, mlflow_runs
from test_run import run_in_process

from kbk import build
from kbk.config import settings_of
from kbk.tracking.dataset_input import dataset_source, token_digest


def sha256_of_ids(tokens: torch.Tensor) -> str:
    return hashlib.sha256(tokens.to(torch.int64).numpy().astype("<i8").tobytes()).hexdigest()[:16]


def test_a_run_logs_its_training_and_validation_splits_with_their_token_digests(tmp_path, mlflow_store):
    outputs = tmp_path / "outputs"
    db = mlflow_store(outputs)
    overrides = [*TINY, f"paths.outputs={outputs}", "tracking.system_metrics=false"]
    run_in_process(overrides, tmp_path / "job")
    (run,) = mlflow_runs(db)
    data = build.corpus(settings_of(compose_kbk(overrides)))  # the same seed: the same token ids
    found = {tag.value: entry.dataset for entry in run.inputs.dataset_inputs for tag in entry.tags
             if tag.key == "mlflow.data.context"}
    assert set(found) == {"training", "validation"}
    for context, tokens in (("training", data.train), ("validation", data.val)):
        dataset = found[context]
        assert dataset.name == "synthetic vocab 32"
        assert dataset.digest == sha256_of_ids(tokens)
        assert dataset.source_type == "code" and json.loads(dataset.source)["tags"]["kbk.data.source"] == "synthetic"
        assert json.loads(dataset.profile) == {"tokens": tokens.numel(), "vocabulary": 32}
    assert found["training"].digest != found["validation"].digest


def test_the_digest_depends_on_the_ids_only():
    ids = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    assert token_digest(ids) == token_digest(ids.to(torch.int32)) == token_digest(ids.clone())  # a cache's int32
    assert token_digest(ids) != token_digest(ids.flip(0))
    assert len(token_digest(ids)) == 16  # MLflow stores at most 36 characters


def test_the_source_is_the_corpus_folder_the_hub_or_the_generator(tmp_path):
    text = settings_of(compose_kbk(["data=text", f"data.path={tmp_path}"]))
    assert dataset_source(text, "train") == ("local", json.dumps({"uri": str(tmp_path)}))
    hub_type, hub = dataset_source(settings_of(compose_kbk(["data=wikitext2"])), "validation")
    assert hub_type == "hugging_face" and json.loads(hub) == {"path": "wikitext", "config_name": "wikitext-2-raw-v1",
                                                              "split": "validation"}
    code_type, code = dataset_source(settings_of(compose_kbk(["data.seed=7"])), "train")
    assert code_type == "code" and json.loads(code)["tags"] == {"kbk.data.source": "synthetic", "kbk.data.seed": "7"}
