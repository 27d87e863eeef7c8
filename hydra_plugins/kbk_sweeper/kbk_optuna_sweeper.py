"""`hydra/sweeper=kbk_optuna`: registers the config and names the plugin class where Hydra accepts it. Light on
purpose: Hydra imports this module on every start, even for a single run (Optuna and MLflow load lazily)."""

from kbk.sweep.config import register
from kbk.sweep.optuna_sweeper import KbkOptunaSweeperImpl

register()


class KbkOptunaSweeper(KbkOptunaSweeperImpl):
    """Hydra instantiates plugins only from classes defined in `hydra_plugins`; the work is in the base class."""
