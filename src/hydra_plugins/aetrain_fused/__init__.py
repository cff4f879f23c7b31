"""aetrain's Hydra plugin: `hydra/launcher=fused` (fused sweeps; see `fused_launcher`)."""
