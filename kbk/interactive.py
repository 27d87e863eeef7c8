"""The objects `python -m kbk.run OVERRIDES` would train, for a notebook, a benchmark or a script:

    from kbk.interactive import trainer_for
    trainer = trainer_for(["model=small", "koopman.dim=64"])
    trainer.train_step(*next(iter(trainer.train_batches.epoch(0))))

Nothing is tracked (tracking=none) and nothing is printed while building.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

from omegaconf import DictConfig


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The composed config of `python -m kbk.run OVERRIDES tracking=none` (without Hydra's runtime keys)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import kbk.run  # noqa: F401  (registers the schema and resolvers, as the entrypoint does)
    from kbk.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=[*overrides, "tracking=none"])


def trainer_for(overrides: Sequence[str] = (), floor: bool = False):
    """The seeded `HybridTrainer` of that run, built quietly, with the Koopman schedule over its optimiser steps;
    `floor=True` also gives it the data's Bayes floor (synthetic data)."""
    from kbk import build
    from kbk.config import settings_of
    from kbk.training.checkpoint import seed_everything
    from kbk.training.trainer import HybridTrainer, optimizer_steps

    settings = settings_of(compose(overrides))
    seed_everything(settings.seed)
    with contextlib.redirect_stdout(io.StringIO()):
        data = build.corpus(settings)
        train, val = build.batches(settings, data)
        model = build.model(settings, data.vocab_size)
    options = build.trainer_options(settings)
    return HybridTrainer(model, train, val, options, build.schedule(settings, optimizer_steps(len(train), options)),
                         loss_floor=data.loss_floor(settings.model.n_seq) if floor else None)
