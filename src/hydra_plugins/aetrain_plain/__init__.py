"""aetrain's Hydra plugin: `hydra/launcher=plain`, the default launcher (see `plain_launcher`)."""
