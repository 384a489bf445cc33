"""A lazy task (``Task(lazy=True)``) through ``simulate``: read once, then per step (#16.4).

The task's map-style data set counts every read of every record. After the one streaming
pass at load, each DP-SGD step reads exactly the records it sampled, nothing else; the
loaded data set holds labels and keys, never a features array; and the run equals the
same task loaded eagerly (same seeds: same epsilon, the same weights bit for bit).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

import fedguard.privacy.sampled_batches as sampled_batches
from fedguard.config import SimulationConfig
from fedguard.errors import ConfigError
from fedguard.files import METRICS_FILE, MODEL_FILE
from fedguard.fl.data import clear_data_cache, federated_data
from fedguard.simulations.runner import simulate
from fedguard.task.lazy_records import LazyDataset

N, F = 240, 6

TASK_MODULE = textwrap.dedent(
    f"""
    import dataclasses

    import numpy as np
    import torch
    from torch import nn

    from fedguard.task.api import RecordTransform, Task

    N, F = {N}, {F}
    READS = []  # every record index read, in order
    BATCHES = []  # the indices of every __getitems__ call


    class Counted(torch.utils.data.Dataset):
        def __init__(self):
            rng = np.random.default_rng(5)
            self.x = rng.normal(size=(N, F))
            self.y = (self.x[:, 0] + 0.3 * self.x[:, 1] > 0).astype(np.int64)

        def __len__(self):
            return N

        def __getitem__(self, i):
            READS.append(int(i))
            return self.x[i], int(self.y[i])

        def __getitems__(self, idx):
            BATCHES.append(list(idx))
            return [self[i] for i in idx]


    def model(*, input_shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], num_classes))


    task = Task(
        name="counted",
        model=model,
        load=lambda request: Counted(),
        input_shape=(F,),
        num_classes=2,
        transforms=(RecordTransform(name="half", apply=lambda x: x * 0.5),),
        lazy=True,
    )
    eager = dataclasses.replace(task, lazy=False)
    """
)


@pytest.fixture
def counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    (tmp_path / "lazy_counted_task.py").write_text(TASK_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("lazy_counted_task")
    module.READS.clear()
    module.BATCHES.clear()
    clear_data_cache()
    yield module
    clear_data_cache()


def _config(out: Path, spec: str, **changes: Any) -> SimulationConfig:
    base: dict[str, Any] = dict(
        out=out,
        dataset="counted",
        task=f"lazy_counted_task:{spec}",
        clients=2,
        clients_per_round=2,
        rounds=2,
        batch_size=16,
        lr=0.5,
        epsilon=3.0,
        seed=7,
        vectorize="off",
    )
    return SimulationConfig(**{**base, **changes})


def test_training_reads_only_each_steps_sampled_records_and_holds_no_features(
    counted: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path / "lazy", "task")
    data = federated_data(config)
    ds = data.dataset
    assert isinstance(ds, LazyDataset)
    assert not hasattr(ds, "x_train")
    n_train = len(ds.y_train)
    # Nothing the loaded set holds is a features array of the training records.
    for field in dataclasses.fields(ds):
        value = getattr(ds, field.name)
        if isinstance(value, np.ndarray) and value.ndim >= 2:
            assert value.dtype == np.uint8 and value.shape == (n_train, 32)  # the keys
    assert not hasattr(ds, "x_test") and len(ds.test) == len(ds.y_test) == N - n_train > 0
    # The load: one streaming pass, each record once (plus the transform probe's 16).
    at_load = len(counted.READS)
    assert sorted(set(counted.READS)) == list(range(N))
    assert at_load == N + 16

    steps: list[tuple[int, int]] = []  # (records sampled, records read) per step
    real_read = sampled_batches.read_records

    def counting(data: Any, indices: Any) -> Any:
        before = len(counted.READS)
        got = real_read(data, indices)
        steps.append((len(indices), len(counted.READS) - before))
        return got

    monkeypatch.setattr(sampled_batches, "read_records", counting)
    summary = simulate(config)
    training_reads = counted.READS[at_load:]
    assert steps and all(sampled == read for sampled, read in steps)
    # Training reads training records; evaluation (each round) reads the holdout in batches.
    train_index, test_index = set(ds.train.indices.tolist()), set(ds.test.indices.tolist())
    assert set(training_reads) <= train_index | test_index
    assert len(training_reads) - sum(s for s, _ in steps) == len(test_index) * 2  # 2 rounds
    assert summary.rounds == 2


def test_a_lazy_run_equals_the_same_task_loaded_eagerly(
    counted: ModuleType, tmp_path: Path
) -> None:
    lazy, eager = tmp_path / "lazy", tmp_path / "eager"
    simulate(_config(lazy, "task"))
    simulate(_config(eager, "eager"))
    rows = [
        [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
        for out in (lazy, eager)
    ]
    assert len(rows[0]) == len(rows[1]) == 2
    for a, b in zip(*rows, strict=True):
        assert a["epsilon_max"] == b["epsilon_max"] and a["clients"] == b["clients"] == 2
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-6)
    # The same records on the same side of the keyed split, with the same keys.
    lazy_ds = federated_data(_config(lazy, "task")).dataset
    eager_ds = federated_data(_config(eager, "eager")).dataset
    assert isinstance(lazy_ds, LazyDataset) and not isinstance(eager_ds, LazyDataset)
    np.testing.assert_array_equal(lazy_ds.train_record_keys, eager_ds.train_record_keys)
    np.testing.assert_array_equal(lazy_ds.y_test, eager_ds.y_test)
    first = lazy_ds.train[0][0].numpy()
    np.testing.assert_array_equal(first, eager_ds.x_train[0])  # transformed on read
    wa, wb = load_file(lazy / MODEL_FILE), load_file(eager / MODEL_FILE)
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k])  # the same batches, bit for bit


def test_a_lazy_task_refuses_batched_training_and_the_other_engines(
    counted: ModuleType, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"--vectorize.*lazy"):
        simulate(_config(tmp_path / "on", "task", vectorize="on"))
    with pytest.raises(ConfigError, match=r"--engine: expected 'inprocess'.*got 'ray'"):
        simulate(_config(tmp_path / "ray", "task", engine="ray"))


def test_a_lazy_secagg_run_equals_the_eager_one(counted: ModuleType, tmp_path: Path) -> None:
    lazy, eager = tmp_path / "lazy", tmp_path / "eager"
    simulate(_config(lazy, "task", secagg=True))
    simulate(_config(eager, "eager", secagg=True))
    wa, wb = load_file(lazy / MODEL_FILE), load_file(eager / MODEL_FILE)
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k])  # the same batches, bit for bit


def test_a_deployed_node_holds_the_lazy_set_and_reads_only_sampled_records(
    counted: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedguard.client.node import node_runtime
    from fedguard.fl.loop import TrainRequest
    from fedguard.task import get_weights
    from fedguard.task.api import LoadRequest
    from fedguard.task.lazy_records import TaskRecords
    from fedguard.task.task_checks import load_task_data

    spec = "lazy_counted_task:task"
    toml = tmp_path / "node.toml"
    toml.write_text(
        f'[node]\nname = "n"\nserver = "127.0.0.1:9"\ninsecure = true\n'
        f'state-dir = "{tmp_path / "state"}"\n\n[data]\ndataset = "counted"\ntask = "{spec}"\n'
    )
    node_runtime.cache_clear()
    runtime = node_runtime(str(toml))
    assert runtime.x is None and isinstance(runtime.data, TaskRecords)
    assert len(runtime.data) == len(runtime.y) == N  # every record trains on a node
    # The keys from the streaming pass are the eager load's (raw bytes, before transforms).
    eager = load_task_data(counted.eager, LoadRequest(source="counted", seed=0, split="none"))
    np.testing.assert_array_equal(runtime.record_keys, eager.train_record_keys)

    steps: list[tuple[int, int]] = []
    real_read = sampled_batches.read_records

    def counting(data: Any, indices: Any) -> Any:
        before = len(counted.READS)
        got = real_read(data, indices)
        steps.append((len(indices), len(counted.READS) - before))
        return got

    monkeypatch.setattr(sampled_batches, "read_records", counting)
    weights = get_weights(counted.model(input_shape=(F,), num_classes=2))
    request = TrainRequest(
        server_round=1,
        local_epochs=1,
        batch_size=16,
        lr=0.5,
        max_grad_norm=1.0,
        total_rounds=2,
        federation="lazy",
        model=spec,
        run_id="run-a",
    )
    at_train = len(counted.READS)
    result = runtime.train(model_name=spec, weights=weights, request=request)
    assert result.epsilon is not None and result.epsilon > 0 and result.num_examples == N
    assert steps and all(sampled == read for sampled, read in steps)
    assert len(counted.READS) - at_train == sum(s for s, _ in steps)
    node_runtime.cache_clear()


def test_attack_records_changed_on_disk_after_the_load_do_not_train_under_stale_keys(
    counted: ModuleType, tmp_path: Path
) -> None:
    """The per-record budget charges the keys of the load's pass. A record rewritten on
    disk afterwards (another person's record in the file) must not train charged to the
    key of the record it replaced: its own spend would go uncounted."""
    from fedguard.client.node import node_runtime
    from fedguard.errors import DataError
    from fedguard.fl.loop import TrainRequest
    from fedguard.task import get_weights

    spec = "lazy_counted_task:task"
    toml = tmp_path / "node.toml"
    toml.write_text(
        f'[node]\nname = "n"\nserver = "127.0.0.1:9"\ninsecure = true\n'
        f'state-dir = "{tmp_path / "state"}"\n\n[data]\ndataset = "counted"\ntask = "{spec}"\n'
    )
    node_runtime.cache_clear()
    runtime = node_runtime(str(toml))
    assert runtime.data is not None
    runtime.data.data.x[:] = runtime.data.data.x[::-1] + 1.0  # every record replaced
    request = TrainRequest(
        server_round=1,
        local_epochs=1,
        batch_size=16,
        lr=0.5,
        max_grad_norm=1.0,
        total_rounds=2,
        federation="lazy",
        model=spec,
        run_id="run-a",
    )
    weights = get_weights(counted.model(input_shape=(F,), num_classes=2))
    try:
        with pytest.raises(DataError, match=r"record \d+ of Counted.*changed since"):
            runtime.train(model_name=spec, weights=weights, request=request)
    finally:
        node_runtime.cache_clear()
