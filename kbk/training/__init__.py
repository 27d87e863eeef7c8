"""Loss-weight schedules, the hybrid Koopman-gradient trainer and checkpoints, in plain PyTorch."""
