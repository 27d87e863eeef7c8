"""The Hydra application: every config composes and builds, a tiny run end to end, bad input, resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

import kbk.run  # noqa: F401  (registers the config schema and resolvers, as the entrypoint does)
from kbk import build
from kbk.config import validate
from kbk.paths import CONF_DIR, PROJECT_ROOT

TINY_MODEL = ["model.n_seq=16", "model.d_model=16", "model.n_layers=1", "koopman.dim=8", "koopman.sample_tokens=32",
              "trainer.batch_size=4", "trainer.max_steps=12", "trainer.eval_every=4", "trainer.log_every=2"]
TINY = [*TINY_MODEL, "data.n_train_tokens=4000", "data.n_val_tokens=1000", "data.vocab_size=32"]
GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())
CHOICES = [(g, f.stem) for g in GROUPS for f in sorted((CONF_DIR / g).glob("*.yaml"))]
NEEDS_PATH = {("data", "text"): ["data.path=/tmp/any.txt"]}


def composed(overrides, hydra=False):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=hydra)


@pytest.mark.parametrize(("group", "choice"), CHOICES, ids=[f"{g}={c}" for g, c in CHOICES])
def test_every_config_file_composes_validates_and_builds_its_model(group, choice):
    overrides = [f"{group}={choice}", *NEEDS_PATH.get((group, choice), [])]
    if choice == "transformer":
        overrides.append("koopman=off")
    cfg = composed(overrides, hydra=group == "hparams_search")  # a sweep preset also configures hydra.sweeper
    if "hydra" in cfg:
        assert cfg.hydra.sweeper.params  # it sweeps something
        with open_dict(cfg):
            del cfg["hydra"]
    settings = OmegaConf.to_object(cfg)
    validate(settings)
    model = build.model(settings, vocab_size=50)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_seed_colab_preset_is_the_seeds_run():
    settings = OmegaConf.to_object(composed(["experiment=seed_colab"]))
    assert (settings.model.d_model, settings.model.n_layers, settings.model.n_seq) == (64, 4, 128)
    assert (settings.koopman.dim, settings.dmd.buffer_size, settings.dmd.alpha) == (256, 100, 0.1)
    assert (settings.trainer.epochs, settings.schedule.warmup, settings.schedule.max_weight) == (5, 3, 0.1)
    assert settings.data.source == "wikitext2" and settings.schedule.unit == "epoch"
    assert sum(p.numel() for p in build.model(settings, vocab_size=30_000).parameters()) == 5_066_952


def test_tiny_run_in_process_logs_the_contract_to_mlflow(tmp_path):
    from mlflow import MlflowClient

    from kbk.run import run

    cfg = composed([*TINY, f"paths.outputs={tmp_path}"], hydra=True)
    HydraConfig().set_config(cfg)
    out = tmp_path / "job"
    with open_dict(cfg):
        del cfg["hydra"]
    objective = run(cfg, out)
    summary = json.loads((out / "summary.json").read_text())
    assert objective == summary["val/ppl"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (r,) = client.search_runs([client.get_experiment_by_name("kbk").experiment_id])
    assert r.info.status == "FINISHED"
    assert (r.data.params["koopman.dim"], r.data.params["dmd.buffer_size"], r.data.params["schedule.type"]) == (
        "8", "100", "linear")
    for metric in ("train/loss_lm", "train/loss_koopman", "train/koopman_weight", "train/loss_total", "val/loss",
                   "val/ppl", "val/ppl_koopman", "val/loss_floor", "perf/tokens_per_s", "perf/step_ms",
                   "koopman/0/spectral_radius"):
        assert metric in r.data.metrics, metric
    assert r.data.metrics["val/loss"] == summary["val/loss"]
    val_history = [m.value for m in client.get_metric_history(r.info.run_id, "val/loss")]
    assert len(val_history) == 3 and val_history[-1] < val_history[0]  # at 4, 8, 12 (the final one reuses 12's)
    assert r.data.tags["kbk.config_hash"] == summary["config_hash"]
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"config.yaml", "plots", "summary.json"} <= artifacts
    # Same config and seed: the same numbers, exactly.
    cfg2 = composed([*TINY, f"paths.outputs={tmp_path / 'again'}", "tracking=none"])
    assert run(cfg2, tmp_path / "job2") == objective


def kbk_run(args, outputs, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "kbk.run", *args, f"paths.outputs={outputs}"], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=PROJECT_ROOT, timeout=300, **kw)


BAD = {
    "koopman_dim_zero": (["koopman.dim=0"], "koopman.dim=0"),
    "negative_buffer": (["dmd.buffer_size=-5"], "dmd.buffer_size=-5"),
    "unknown_schedule": (["schedule=foo"], "schedule/foo"),
    "text_without_path": (["data=text"], "data.path"),
    "missing_text_path": (["data=text", "data.path=/nonexistent/corpus.txt"], "/nonexistent/corpus.txt"),
    "n_seq_larger_than_data": (["data.n_val_tokens=100", "model.n_seq=128"], "model.n_seq=128"),
    "unreachable_server": (["tracking.uri=http://127.0.0.1:9"], "127.0.0.1:9"),
    "corrupt_checkpoint": (["trainer.resume=CORRUPT"], "corrupt"),
    "unknown_key": (["+trainer.bogus=1"], "trainer.bogus is not a kbk setting"),
    "wrong_type": (["trainer.epochs=abc"], "trainer.epochs"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_clear_message_and_nothing_written(case, tmp_path):
    args, phrase = BAD[case]
    if case == "corrupt_checkpoint":
        (tmp_path / "bad.pt").write_bytes(b"garbage")
        args = [a.replace("CORRUPT", str(tmp_path / "bad.pt")) for a in args]
    outputs = tmp_path / "out"
    result = kbk_run([*(TINY_MODEL if "data=text" in args else TINY), *args], outputs)
    assert result.returncode != 0
    assert phrase in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    db = outputs / "mlflow.db"
    if db.exists():
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{db}")
        assert not client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert not [p for p in outputs.rglob("*") if p.is_file() and p.parent.name != "data"]  # (a data cache is fine)


def test_wikitext2_offline_without_a_cache_names_the_alternatives(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = kbk_run([*TINY_MODEL, "data=wikitext2"], tmp_path / "out", env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    for alternative in ("data.path", "data=text", "data=synthetic"):
        assert alternative in result.stderr


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result_with_one_clean_mlflow_run(tmp_path):
    from mlflow import MlflowClient

    args = [*TINY, "trainer.max_steps=400", "trainer.eval_every=50", "trainer.checkpoint_every=10",
            "trainer.layerwise_eval=false", "data.n_train_tokens=20000"]
    whole = kbk_run(args, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    expected = json.loads(next((tmp_path / "whole" / "runs").rglob("summary.json")).read_text())

    outputs = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "kbk.run", *args, f"paths.outputs={outputs}"],
                            cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not list(outputs.glob("runs/*/*/checkpoints/last.pt")):
        time.sleep(0.2)
    time.sleep(3)  # let it get well past the first checkpoints
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = kbk_run([*args, "trainer.resume=true"], outputs)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    got = json.loads(next(iter(sorted((outputs / "runs").rglob("summary.json")))).read_text())
    print(f"uninterrupted val/loss {expected['val/loss']!r}, resumed val/loss {got['val/loss']!r}")
    assert got["val/loss"] == expected["val/loss"]

    def histories(db):
        client = MlflowClient(f"sqlite:///{db}")
        runs = client.search_runs([client.get_experiment_by_name("kbk").experiment_id])
        return runs, {k: [(m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, k)]
                      for k in ("train/loss_lm", "val/loss")}

    runs, history = histories(outputs / "mlflow.db")
    _, expected_history = histories(tmp_path / "whole" / "mlflow.db")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    for key, points in history.items():
        steps = [s for s, _ in points]
        assert steps == sorted(set(steps)), f"{key}: duplicate or unordered steps"
        assert steps == [s for s, _ in expected_history[key]], f"{key}: a gap"
        assert [v for _, v in points] == [v for _, v in expected_history[key]]


@pytest.mark.slow
def test_sigterm_ends_the_mlflow_run_killed(tmp_path):
    from mlflow import MlflowClient

    outputs = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "kbk.run", *TINY, "trainer.max_steps=100000",
                             "data.n_train_tokens=200000", f"paths.outputs={outputs}"], cwd=PROJECT_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not list(outputs.glob("checkpoints/*/run.json")):
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    client = MlflowClient(f"sqlite:///{outputs / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("kbk").experiment_id])
    assert run.info.status == "KILLED"
