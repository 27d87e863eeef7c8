"""Exposes kbk's Optuna sweeper to Hydra, which looks for plugins only in the `hydra_plugins` namespace package.
The implementation lives in `kbk.sweep`."""
