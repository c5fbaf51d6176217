"""Pretraining: token shards, the data loader, the Falcon recipe (optimizer, schedules, z-loss), the loop.

Import submodules directly; this package's import pulls in nothing heavy, so `falconlm tokenize`
runs without torch.
"""
