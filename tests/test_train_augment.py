"""Augmentation inside training: off is the run without it, bit for bit; on changes what is
learned, still learns, and resumes exactly; the [augment] section round-trips through TOML."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from neumours.data.phantom import write_dataset
from neumours.errors import NeumoursError
from neumours.train.augment import AugmentConfig, Augmenter
from neumours.train.config import TrainConfig, load_toml, preset, save_toml
from neumours.train.trainer import Trainer
from conftest import BITWISE_RUNS, cpu_device_only


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    write_dataset(root, 4, shape=(24, 24, 20), seed=5, progress=False)
    return root


def tiny(steps=6, augment=AugmentConfig(), **schedule):
    config = preset("tiny")
    return dataclasses.replace(config, augment=augment,
                               schedule=dataclasses.replace(config.schedule, steps=steps, val_every=steps, **schedule))


def _params(trainer):
    return {k: v.numpy().copy() for k, v in trainer.inr.state_dict().items()}


def _run(dataset, out, config, device, patch=None):
    trainer = Trainer(dataset, out, config, device, progress=False)
    if patch:
        patch(trainer)
    trainer.run()
    trainer.close()
    return trainer


@cpu_device_only(BITWISE_RUNS)
def test_off_by_default_and_identity_augmentation_is_bit_identical(cpu_device, dataset, tmp_path, monkeypatch):
    plain = _run(dataset, tmp_path / "plain", tiny(), cpu_device)
    assert plain.augmenter is None  # nothing drawn, nothing dispatched

    # Every transform drawn, the kernel dispatched, but with all its groups off: it copies its
    # inputs and the Augmenter's generator is not the sampler's, so the run is the plain one.
    monkeypatch.setattr(Augmenter, "flags", property(lambda self: 0))
    copied = _run(dataset, tmp_path / "copied", tiny(augment=AugmentConfig.default_on()), cpu_device)
    assert copied.augmenter is not None
    a, b = _params(plain), _params(copied)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert [r["loss"] for r in plain.rows] == [r["loss"] for r in copied.rows]


@cpu_device_only(BITWISE_RUNS)
def test_augmentation_changes_training_and_resumes_exactly(cpu_device, dataset, tmp_path):
    plain = _params(_run(dataset, tmp_path / "plain", tiny(), cpu_device))
    config = tiny(steps=8, augment=AugmentConfig.default_on(), log_every=2)
    straight = _run(dataset, tmp_path / "a", config, cpu_device)
    assert all(np.isfinite(r["loss"]) for r in straight.rows)
    after = _params(straight)
    assert any(not np.array_equal(plain[k], after[k]) for k in plain)
    interrupted = Trainer(dataset, tmp_path / "b", config, cpu_device, progress=False)
    interrupted.run(stop_after=3)
    interrupted.close()
    resumed = Trainer(dataset, tmp_path / "b", config, cpu_device, resume=True, progress=False)
    resumed.run()
    resumed.close()
    for key, value in _params(resumed).items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)


def test_augment_section_in_toml(tmp_path):
    config = dataclasses.replace(preset("tiny"), augment=AugmentConfig(noise=0.2, flip=0.5, flip_axes=(0, 2)))
    save_toml(config, tmp_path / "c.toml")
    assert "[augment]" in (tmp_path / "c.toml").read_text()
    assert load_toml(tmp_path / "c.toml", TrainConfig()) == config
    (tmp_path / "bad.toml").write_text("[augment]\nnoise = -1.0\n")
    with pytest.raises(NeumoursError, match=r"\[augment\]"):
        load_toml(tmp_path / "bad.toml", TrainConfig())
    (tmp_path / "old.toml").write_text("[schedule]\nsteps = 5\n")  # a run from before [augment]
    assert load_toml(tmp_path / "old.toml", TrainConfig()).augment == AugmentConfig()
