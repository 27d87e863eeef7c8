"""kbk's Optuna sweeper for Hydra."""
