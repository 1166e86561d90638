"""Hydra launchers of ponder sweeps (Hydra finds launcher plugins only under `hydra_plugins`)."""
