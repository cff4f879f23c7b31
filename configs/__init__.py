"""aetrain's Hydra config tree, shipped inside the package (read as pkg://aetrain.configs)."""
