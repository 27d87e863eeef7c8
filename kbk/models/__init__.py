"""Pure-PyTorch models: the BK-Core, the ResNet-BK language model, its Koopman variant and baselines."""
