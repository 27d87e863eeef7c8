"""python -m kbk.evaluate: a trained model's loss and perplexity on the validation and test splits, in standard and
Koopman mode, with the layer-by-layer table (one layer at a time in Koopman mode, or skipped).

    python -m kbk.evaluate outputs/runs/<name>/<time>/checkpoints/last.pt
    python -m kbk.evaluate <MLflow run id> --split test --format json
    python -m kbk.evaluate path/to/last.pt --config outputs/runs/kbk/<time>/     # a checkpoint moved elsewhere

The model is rebuilt from the config it was trained with: the `.hydra/config.yaml` of the run folder that the
checkpoint folder's `run.json` names (a run id: its `kbk.output_dir` tag, and its checkpoint is the one in that run
folder, else its config's latest, found through `<outputs>/checkpoints/<kbk.config_hash>/`, else a logged
`checkpoints/last.pt` artifact).
The data is rebuilt from that config too, so the vocabulary is the training one (read from the tokenised-data
cache). The numbers come from the trainer's own evaluation code over every window of a split, so `val` equals the
training run's final `val/loss` when that run evaluated all of its validation batches.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kbk.errors import KbkError, command_line
from kbk.tracking.resume import checkpoint_folder, read_run_record

PROG = "kbk.evaluate"
RUN_ID = re.compile(r"[0-9a-f]{32}")
SPLITS = {"val": ("val",), "test": ("test",), "both": ("val", "test")}


@dataclass
class Trained:
    """A trained model with everything it was trained with."""

    checkpoint: Path
    run_id: str | None
    settings: Any  # the validated KbkConfig
    corpus: Any  # kbk.data.Corpus (training vocabulary)
    model: Any  # torch.nn.Module, in eval mode, on `device`
    step: int
    device: str


def note(message: str) -> None:
    print(f"{PROG}: note: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ finding things
def locate(target: str, config: str | None, uri: str | None, scratch: Path) -> tuple[Path, Path, str | None]:
    """(checkpoint file, config.yaml, MLflow run id or None) for a checkpoint path or an MLflow run id; a checkpoint
    that exists only as an MLflow artifact is downloaded into `scratch`."""
    path = Path(target).expanduser()
    if path.is_dir():
        path = path / "last.pt"
    if path.is_file():
        info = read_run_record(path.parent)
        return path, config_file(config, info.get("output_dir"), path), info.get("run_id")
    if RUN_ID.fullmatch(target):
        return locate_run(target, config, uri, scratch)
    raise KbkError(
        f"{target}: no such checkpoint file, and not an MLflow run id (32 hex digits). Fix: pass the path of a "
        f"last.pt that kbk wrote (<run folder>/checkpoints/last.pt) or the id of a run of python -m kbk.run"
    )


def config_file(given: str | None, output_dir: str | None, checkpoint: Path) -> Path:
    """`--config` (a config.yaml or a run folder), else the config.yaml of the run folder `output_dir`."""
    if given is not None:
        path = Path(given).expanduser()
        path = path / ".hydra" / "config.yaml" if path.is_dir() else path
        if not path.is_file():
            raise KbkError(f"--config {given}: no such file; pass a run folder's .hydra/config.yaml (or the folder)")
        return path
    if output_dir is None:
        raise KbkError(
            f"cannot tell which config {checkpoint} was trained with: there is no run.json next to it naming its run "
            f"folder. Fix: pass --config <run folder>/.hydra/config.yaml"
        )
    path = Path(output_dir) / ".hydra" / "config.yaml"
    if not path.is_file():
        raise KbkError(
            f"the config {checkpoint} was trained with is gone: its run folder {output_dir} has no .hydra/config.yaml."
            f" Fix: pass --config <a run folder of the same config>/.hydra/config.yaml"
        )
    return path


def locate_run(run_id: str, config: str | None, uri: str | None, scratch: Path) -> tuple[Path, Path, str]:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from kbk.compare.select import tracking_uri
    from kbk.paths import outputs_dir
    from kbk.tracking.store import redact_url

    store = tracking_uri(uri)
    client = MlflowClient(store)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise KbkError(
            f"no MLflow run {run_id} in {redact_url(store)}. Fix: copy the id from `mlflow ui` or "
            f"python -m kbk.compare, or pass --uri <the store the run was logged to>"
        ) from None
    tags = run.data.tags
    if tags.get("kbk.role") == "sweep":
        raise KbkError(
            f"MLflow run {run_id} is the parent run of sweep {tags.get('kbk.sweep')}, which trains no model itself. "
            f"Fix: evaluate one of its trials (python -m kbk.compare --sweep {tags.get('kbk.sweep')} lists them)"
        )
    output_dir, config_hash = tags.get("kbk.output_dir"), tags.get("kbk.config_hash")
    if not output_dir or not config_hash:
        raise KbkError(
            f"MLflow run {run_id} was not made by python -m kbk.run (it has no kbk.output_dir and kbk.config_hash "
            f"tags), so it has no kbk checkpoint. Fix: pass a checkpoint path and --config"
        )
    cfg_path = config_file(config, output_dir, Path(f"run {run_id}"))
    own = Path(output_dir) / "checkpoints"  # the run's own, unless it was resumed (then: its config's latest)
    folder = own if read_run_record(own).get("run_id") == run_id and (own / "last.pt").is_file() else (
        checkpoint_folder(outputs_dir(load_settings(cfg_path).paths.outputs) / "checkpoints" / config_hash))
    checkpoint = folder / "last.pt"
    if checkpoint.is_file():
        last_writer = read_run_record(folder).get("run_id")
        if last_writer and last_writer != run_id:
            note(f"{checkpoint} was last written by MLflow run {last_writer}, a later run of the same config")
        return checkpoint, cfg_path, run_id
    logged = [a.path for a in client.list_artifacts(run_id, "checkpoints")]
    if "checkpoints/last.pt" in logged:  # trainer.log_checkpoint=true kept a copy
        return Path(client.download_artifacts(run_id, "checkpoints/last.pt", str(scratch))), cfg_path, run_id
    raise KbkError(
        f"MLflow run {run_id} has no checkpoint: {checkpoint} does not exist and the run logged none (a run that "
        f"failed before its first checkpoint, or whose checkpoint folder was deleted). Fix: train it again with the "
        f"same config (its .hydra/overrides.yaml), adding trainer.log_checkpoint=true to keep a copy in MLflow"
    )


# ------------------------------------------------------------------------------------------------ loading
def load_settings(path: Path):
    """The validated config of a run folder's `.hydra/config.yaml`."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from kbk.config import KbkConfig, settings_of
    from kbk.paths import register_resolvers

    register_resolvers()  # the config's paths may use ${kbk_outputs:}
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(KbkConfig), OmegaConf.load(path))
    except (OSError, ValueError, OmegaConfBaseException) as exc:
        raise KbkError(f"cannot read the config {path} ({type(exc).__name__}: {exc}). Fix: pass --config "
                       f"<a run folder>/.hydra/config.yaml") from None
    return settings_of(cfg)


def read_checkpoint(path: Path) -> dict[str, Any]:
    import torch

    from kbk.training.checkpoint import FORMAT_VERSION

    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise KbkError(f"{path} is corrupt or not a kbk checkpoint ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0][:200]}). Fix: pass a last.pt that kbk wrote") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION or "model" not in state:
        raise KbkError(f"{path} is not a checkpoint of this version of kbk (format_version "
                       f"{state.get('format_version') if isinstance(state, dict) else None}, expected {FORMAT_VERSION}"
                       f"). Fix: pass a last.pt that this kbk wrote")
    return state


def check_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise KbkError(f"--device {device}: no CUDA device is available here. Fix: --device cpu (or auto)")
    return device


def load_trained(target: str, device: str = "auto", config: str | None = None, uri: str | None = None) -> Trained:
    """The model of a checkpoint path or MLflow run id, rebuilt from its config, with its training data."""
    import tempfile

    from kbk import build

    device = check_device(device)
    with tempfile.TemporaryDirectory(prefix="kbk-evaluate-") as scratch:
        checkpoint, cfg_path, run_id = locate(target, config, uri, Path(scratch))
        state = read_checkpoint(checkpoint)
        if checkpoint.is_relative_to(scratch):
            checkpoint = Path(f"runs:/{run_id}/checkpoints/last.pt")  # where it came from, not the deleted copy
    settings = load_settings(cfg_path)
    settings.trainer.device = device
    settings.trainer.compile = False  # compiling would cost minutes for one pass over the splits
    with contextlib.redirect_stdout(sys.stderr):  # start-up lines are progress, not results: stdout stays parseable
        corpus = build.corpus(settings)
        model = build.model(settings, corpus.vocab_size)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))[:300]
        raise KbkError(
            f"{checkpoint} does not fit the model its config ({cfg_path}) builds with this data's vocabulary of "
            f"{corpus.vocab_size:,} ids ({detail}). Fix: pass the --config it was trained with; if the training text "
            f"changed since, restore it"
        ) from None
    model.to(device).eval()
    return Trained(checkpoint, run_id, settings, corpus, model, int(state.get("position", {}).get("step", 0)), device)


# ------------------------------------------------------------------------------------------------ evaluating
def evaluate_split(trained: Trained, split: str) -> dict[str, Any]:
    """Loss and perplexity of `split` in standard and Koopman mode, the Bayes floor (synthetic data) and the
    per-layer perplexities, over every window of the split."""
    from kbk import build
    from kbk.data.batching import TokenBatches, num_windows
    from kbk.errors import DataError
    from kbk.training.trainer import HybridTrainer, safe_exp

    settings, corpus = trained.settings, trained.corpus
    tokens, n_seq = corpus.split(split), settings.model.n_seq
    if num_windows(tokens.numel(), n_seq) == 0:
        raise DataError(f"the {split} split has {tokens.numel()} tokens, too few for one window of "
                        f"model.n_seq={n_seq} (+1 target): evaluate another split")
    batches = TokenBatches(tokens, n_seq, settings.trainer.batch_size, shuffle=False)
    options = dataclasses.replace(build.trainer_options(settings), eval_batches=None, layerwise_eval=True,
                                  layerwise_tokens=None)
    trainer = HybridTrainer(trained.model, batches, batches, options)  # evaluation only: never steps
    modes = "standard, Koopman mode and each layer alone" if trainer.has_koopman else "standard"
    print(f"[kbk] evaluating {split}: {batches.n_windows * n_seq:,} tokens, {modes}", file=sys.stderr, flush=True)
    loss = trainer.evaluate("standard")
    result: dict[str, Any] = {"tokens": batches.n_windows * n_seq, "loss": loss, "ppl": safe_exp(loss)}
    floor = corpus.loss_floor(n_seq, split)
    if floor is not None:
        result.update({"loss_floor": floor, "ppl_floor": safe_exp(floor)})
    if trainer.has_koopman:
        k_loss = trainer.evaluate("koopman")
        result.update({"loss_koopman": k_loss, "ppl_koopman": safe_exp(k_loss)})
        layerwise = trainer.layerwise_metrics()
        result["layers"] = [
            {"layer": layer, "ppl_koopman_only": layerwise[f"koopman/{layer}/val_ppl_koopman_only"],
             "ppl_skip_only": layerwise[f"koopman/{layer}/val_ppl_skip_only"]}
            for layer in range(len(trained.model.blocks))
        ]
    return result


def evaluate(trained: Trained, split: str = "both") -> dict[str, Any]:
    splits = SPLITS[split]
    if "test" in splits and not trained.corpus.has_test:
        if split == "test":
            trained.corpus.test()  # raises the DataError that says how to get a test split
        note(f"the {trained.corpus.name} data has no test split: evaluating the validation split only")
        splits = ("val",)
    s = trained.settings
    return {
        "checkpoint": str(trained.checkpoint), "run_id": trained.run_id, "step": trained.step,
        "model": s.model.arch, "data": trained.corpus.name, "koopman": bool(s.koopman.enabled),
        "device": trained.device, "splits": {name: evaluate_split(trained, name) for name in splits},
    }


# ------------------------------------------------------------------------------------------------ printing
def render_tables(result: dict[str, Any]) -> list:
    from rich.table import Table

    splits = result["splits"]
    first = next(iter(splits.values()))
    table = Table(title="loss (nats/token) and perplexity, every window of each split", title_justify="left")
    columns = [("tokens", "tokens", "{:,}"), ("loss", "loss", "{:.4f}"), ("ppl", "ppl", "{:.2f}")]
    if "loss_koopman" in first:
        columns += [("loss_koopman", "Koopman loss", "{:.4f}"), ("ppl_koopman", "Koopman ppl", "{:.2f}")]
    if "loss_floor" in first:
        columns += [("loss_floor", "floor loss", "{:.4f}"), ("ppl_floor", "floor ppl", "{:.2f}")]
    table.add_column("split")
    for _, header, _ in columns:
        table.add_column(header, justify="right")
    for name, row in splits.items():
        table.add_row(name, *(fmt.format(row[key]) for key, _, fmt in columns))
    tables = [table]
    if "layers" in first:
        layers = Table(title="per layer: that layer in Koopman mode, or skipped; the others standard (ppl)",
                       title_justify="left")
        layers.add_column("layer", justify="right")
        for name in splits:
            layers.add_column(f"{name} Koopman-only", justify="right")
            layers.add_column(f"{name} skip-only", justify="right")
        for i, _ in enumerate(first["layers"]):
            cells = [f"{splits[n]['layers'][i][k]:.2f}" for n in splits for k in ("ppl_koopman_only", "ppl_skip_only")]
            layers.add_row(str(i), *cells)
        tables.append(layers)
    return tables


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", help="a checkpoint (last.pt, or its folder) or an MLflow run id")
    p.add_argument("--split", choices=tuple(SPLITS), default="both",
                   help="which splits (default: both; only val when the data has no test split)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--device", default="auto", help="auto (CUDA when present, default), cpu, cuda, cuda:<index>")
    p.add_argument("--config", help="the run folder (or its .hydra/config.yaml) the checkpoint was trained with "
                                    "(default: from the run.json next to the checkpoint)")
    p.add_argument("--uri", help="MLflow store holding a run id (default: the SQLite store under outputs/)")
    return p


@command_line(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result = evaluate(load_trained(args.target, args.device, args.config, args.uri), args.split)
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        from rich.console import Console

        console = Console(width=max(100, Console().width), soft_wrap=False)
        run = f", MLflow run {result['run_id']}" if result["run_id"] else ""
        print(f"{result['checkpoint']} (step {result['step']}{run}): {result['model']} on {result['data']}, "
              f"{result['device']}")
        for table in render_tables(result):
            console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
