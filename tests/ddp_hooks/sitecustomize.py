"""Faults on cue for tests/test_ddp.py, inside the processes of a data-parallel run. Not part of aetrain.

The tests put this folder on PYTHONPATH, so every Python process they start imports it at
start-up (Python's `sitecustomize`); it does nothing unless AETRAIN_TEST_HOOKS is set, and then
only in a process a launcher started (RANK set). AETRAIN_TEST_HOOKS is a comma-separated list:

- `kill=R@E.S`: the process of rank R kills itself (SIGKILL) after step S of epoch E, first writing
  the time into $AETRAIN_TEST_HOOKS_DIR/killed_at;
- `term_launcher=R@E.S`: rank R sends SIGTERM to its launcher (its parent process) after step S of epoch E;
- `hang=R@E.S`: rank R stops responding (sleeps, deaf to SIGTERM) after step S of epoch E, first writing the
  time into $AETRAIN_TEST_HOOKS_DIR/hung_at;
- `perturb=R@N`: rank R adds 1e-3 to one weight after optimizer step N, as a fault on one replica would.
"""

import os

_SPEC = os.environ.get("AETRAIN_TEST_HOOKS", "")
if _SPEC and "RANK" in os.environ:
    import signal
    import time
    from pathlib import Path

    import torch

    from aetrain.train.engine import Callback, Engine

    _RANK = int(os.environ["RANK"])
    _HOOKS = {}
    for item in _SPEC.split(","):
        name, _, where = item.partition("=")
        rank, _, when = where.partition("@")
        if int(rank) == _RANK:
            _HOOKS[name] = tuple(int(x) for x in when.split("."))

    class _Hooks(Callback):
        def on_step(self, engine: Engine) -> None:
            st = engine.state
            here = (st.epoch + 1, st.step_in_epoch)
            if _HOOKS.get("kill") == here:
                Path(os.environ["AETRAIN_TEST_HOOKS_DIR"], "killed_at").write_text(repr(time.time()))
                os.kill(os.getpid(), signal.SIGKILL)
            if _HOOKS.get("hang") == here:
                Path(os.environ["AETRAIN_TEST_HOOKS_DIR"], "hung_at").write_text(repr(time.time()))
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                while True:
                    time.sleep(60)
            if _HOOKS.get("term_launcher") == here:
                os.kill(os.getppid(), signal.SIGTERM)
            if _HOOKS.get("perturb") == (st.step,):
                with torch.no_grad():
                    next(engine.parts.model.parameters()).view(-1)[0] += 1e-3

    _fit = Engine.fit

    def _fit_with_hooks(self: Engine) -> object:
        self.callbacks.append(_Hooks())
        return _fit(self)

    Engine.fit = _fit_with_hooks
