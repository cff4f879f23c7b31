"""The up-front memory check: a model, its optimizer and a batch's activations that cannot fit are refused in one
line before anything is built or written, and the estimate is a lower bound of what training takes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from aetrain.errors import ConfigError
from conftest import FAST, assert_one_line_error, save_pngs

# --- a model that cannot fit in memory is refused before it is built ------------------------------------------------

def test_a_model_too_large_for_memory_is_refused_in_one_line(cli, tmp_path: Path, monkeypatch) -> None:
    """A 20 x 2,000,000 array makes a dense model of a billion parameters: on a 24 GB machine it was OOM-killed
    after minutes. Here the machine is made to have 24 GB available, whatever this one has."""
    import aetrain.train.memory

    monkeypatch.setattr(aetrain.train.memory, "available_host_memory", lambda: 24 * 10**9)
    np.save(tmp_path / "wide.npy", np.zeros((20, 2_000_000), np.float32))
    result = cli(*FAST, "data=tensor_file", f"data.path={tmp_path / 'wide.npy'}")
    assert_one_line_error(result, "the model does not fit in memory: dense_ae on 2000000 inputs has 1,026,070,416 "
                                  "parameters and training needs at least 49.2 GB")  # 16 GB of it the doctor's check
    assert "but 24.0 GB is available; make the model smaller (model.hidden_dims, model.latent_dim)" in result.err


def test_a_model_no_machine_can_hold_is_refused(cli, tmp_path: Path) -> None:
    np.save(tmp_path / "rows.npy", np.zeros((20, 200_000), np.float32))
    result = cli(*FAST, "data=tensor_file", f"data.path={tmp_path / 'rows.npy'}", "model.hidden_dims=[10000000]")
    assert_one_line_error(result, "dense_ae on 200000 inputs has 4,000,")  # 4e12 parameters: 128 TB
    assert "make the model smaller (model.hidden_dims, model.latent_dim)" in result.err


def test_a_batch_whose_activations_cannot_fit_names_the_batch_and_image_size(cli, tmp_path: Path, monkeypatch) -> None:
    import aetrain.train.memory

    monkeypatch.setattr(aetrain.train.memory, "available_host_memory", lambda: 24 * 10**9)
    save_pngs(tmp_path / "imgs", 10, size=4)  # 4000 x 4000 once resized: 3.5 GB of layer outputs per image
    result = cli(*FAST, "model=conv_ae", "model.latent_dim=1", "data=image_folder", f"data.path={tmp_path / 'imgs'}",
                 "data.num_workers=0", "data.image_size=4000", "data.batch_size=8")
    assert_one_line_error(result, "the model does not fit in memory: conv_ae on 3x4000x4000 inputs")
    assert "lower data.batch_size or data.image_size" in result.err


def test_the_memory_estimate_is_a_lower_bound_of_what_training_takes() -> None:
    """Parameters counted without building the model; the estimate is below a measured run's peak (README)."""
    from aetrain.config import Config, DataConfig, DiagnosticsConfig
    from aetrain.models import FAMILIES
    from aetrain.train.memory import doctor_check_bytes, estimate

    cfg = Config(data=DataConfig(batch_size=64), diagnostics=DiagnosticsConfig(enabled=False))  # training alone
    state = torch.get_rng_state()
    need = estimate(cfg, FAMILIES.get("dense_ae"), _spec((1, 8, 8)), batch_size=64)
    assert torch.equal(state, torch.get_rng_state())  # counting draws no random numbers: runs stay as they were
    assert need.parameters == 64 * 256 + 256 + 256 * 128 + 128 + 128 * 16 + 16 + 16 * 128 + 128 + 128 * 256 + 256 + \
        256 * 64 + 64
    per_parameter = 4 * (1 + 1 + 2 + 1 + 1 + 2)  # weights, gradients, Adam's 2 moments, a checkpoint's copy and bytes
    assert need.parameter_bytes == per_parameter * need.parameters
    layers = [256, 256, 128, 128, 16, 128, 128, 256, 256, 64, 64]  # each layer's output; flatten is a view, no memory
    assert need.activation_bytes == 4 * 64 * sum(layers)
    # the doctor's check of the code units runs between epochs: the larger of the two counts, not their sum
    with_doctor = estimate(Config(data=DataConfig(batch_size=64)), FAMILIES.get("dense_ae"), _spec((1, 8, 8)),
                           batch_size=64)
    spec = _spec((1, 8, 8))
    with torch.device("meta"):
        model = FAMILIES.get("dense_ae").build(Config().model, spec)
    assert with_doctor.activation_bytes == max(need.activation_bytes, doctor_check_bytes(Config(), model, spec))


def _spec(shape: tuple[int, ...]):
    from aetrain.data.spec import DataSpec

    return DataSpec("x", shape, True, torch.tensor(0.0), torch.tensor(1.0), 0.0, 1.0)


def test_on_a_gpu_training_must_fit_its_free_memory_and_the_checkpoint_copies_the_host(monkeypatch) -> None:
    import aetrain.train.memory as memory
    from aetrain.config import Config
    from aetrain.models import FAMILIES

    cfg, family, spec, cuda = Config(), FAMILIES.get("dense_ae"), _spec((1, 8, 8)), torch.device("cuda")
    need = memory.estimate(cfg, family, spec, batch_size=64)
    monkeypatch.setattr(memory, "available_host_memory", lambda: need.host_bytes)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (need.device_bytes, 80 * 10**9))
    memory.check_fits(cfg, family, spec, cuda, batch_size=64)  # exactly enough of each
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (need.device_bytes - 1, 80 * 10**9))
    with pytest.raises(ConfigError, match="GB is free on cuda"):
        memory.check_fits(cfg, family, spec, cuda, batch_size=64)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (need.device_bytes, 80 * 10**9))
    monkeypatch.setattr(memory, "available_host_memory", lambda: need.host_bytes - 1)
    with pytest.raises(ConfigError, match="GB of host memory is available"):
        memory.check_fits(cfg, family, spec, cuda, batch_size=64)


@pytest.mark.skipif(not Path("/proc/meminfo").is_file(), reason="reads Linux's /proc/meminfo")
def test_available_memory_is_read_on_linux() -> None:
    from aetrain.train.memory import available_host_memory

    total = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0]) * 1024
    assert 0 < available_host_memory() <= total
