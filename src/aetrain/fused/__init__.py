"""Fused sweeps: the jobs of a sweep that share a shape train as one vectorised model.

- `grouping`: which jobs fuse (`FUSIBLE` keys), `group_configs`, and why a job trains alone;
- `net`: K same-shaped autoencoders as one batched network whose weights are the members' own;
- `step`: the group's optimizer step (one batched forward/backward, each member's own update);
- `engine`: the loop, driving each member's callbacks through a single run's `Engine`;
- `build`, `group`: the members' parts, and `train_group`, the entry point (each member set up as a run is:
  `aetrain.train.runs`).

README, "Fused sweeps": which keys fuse, when fusing pays, exactness, fallback, interrupt and resume.
"""

from aetrain.fused.grouping import FUSIBLE, Grouping, group_configs

__all__ = ["FUSIBLE", "Grouping", "group_configs", "train_group"]


def __getattr__(name: str):  # noqa: ANN202 - torch only when training: grouping stays torch-free
    if name in ("train_group", "MemberResult"):
        from aetrain.fused import group

        return getattr(group, name)
    raise AttributeError(name)
