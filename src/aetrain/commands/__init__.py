"""The commands of `aetrain <command>`: one module each, plain functions taking typed configs.

`train` (the default command) trains a model into a run dir. The CLI (`aetrain.cli`) composes
each command's config and calls its function; nothing here imports Hydra.
"""
