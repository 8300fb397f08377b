"""The `threads` setting: an explicit value, OMP_NUM_THREADS, or the cores shared among the jobs
of a local multirun (the real submitit_local multirun is in tests/test_sweep.py)."""

import os

import pytest
import torch

from detox.config.validate import validate
from detox.core.errors import ConfigError
from detox.runtime.compute import (
    apply_threads,
    available_cores,
    resolve_threads,
    sweep_size,
)


def test_sweep_size_counts_the_basic_sweepers_jobs():
    assert sweep_size(["a=1,2", "b=x,y,z", "c=5"]) == 6
    assert sweep_size(["d=range(0,4)"], {"e": "1,2"}) == 8
    assert sweep_size(["a=1,2"], {"a": "1,2,3"}) == 2  # the command line wins over hydra.sweeper.params
    assert sweep_size(["c=5"]) == 1


def test_threads_setting_then_omp_then_cores(monkeypatch):
    assert resolve_threads(3) == (3, "threads setting")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert resolve_threads(None) == (2, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert resolve_threads(None)[0] == available_cores()  # outside Hydra: a single job
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two data-parallel processes on this machine
    assert resolve_threads(None)[0] == max(1, available_cores() // 2)


def test_apply_threads_sets_torch(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for name in ("TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS"):  # restored after the test
        monkeypatch.delenv(name, raising=False)
    try:
        assert apply_threads(2) == 2 and torch.get_num_threads() == 2
        assert os.environ["RAYON_NUM_THREADS"] == "2" and os.environ["TOKENIZERS_PARALLELISM"] == "true"
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("key,value", [("threads", 0), ("ppo.forward_batch_size", -1)])
def test_bad_thread_and_batch_settings_are_refused(key, value):
    from conftest import make_cfg

    with pytest.raises(ConfigError, match=key):
        validate(make_cfg([f"{key}={value}"]))
