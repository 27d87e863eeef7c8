"""kbk: Koopman ResNet-BK language-model research framework."""

__version__ = "0.1.0"
