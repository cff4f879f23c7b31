"""Training: the loop (`engine`), the step (`step`), precision, schedules, checkpoints, callbacks and
the outputs a run writes (`outputs`). `aetrain.commands.train` wires them together."""
