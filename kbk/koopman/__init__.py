"""Koopman operator estimation (streaming DMD) and diagnostics, in plain PyTorch."""
