"""What a node sends the server: its updated weights (the model's shapes) and whitelisted
metrics. No data, no labels, no per-example values, no free text."""

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from harness.federation_files import write_federation

from fedguard.client.node import node_runtime
from fedguard.fl.loop import TrainRequest
from fedguard.task import build_model, get_weights
from fedguard.transport.messages import REPLY_METRIC_KEYS, decode_reply_content, encode_reply


def test_a_node_reply_holds_only_weights_and_whitelisted_metrics(tmp_path: Path):
    layout = write_federation(out=tmp_path / "demo", nodes=2, rounds=3)
    runtime = node_runtime(str(layout.nodes[0]))
    model = build_model(name="logreg", input_shape=(1, 8, 8), num_classes=10)
    global_weights = get_weights(model)
    request = TrainRequest(
        server_round=1,
        local_epochs=1,
        batch_size=64,
        lr=0.5,
        max_grad_norm=0.5,
        total_rounds=3,
        federation="t",
        model="logreg",
    )
    result = runtime.train(model_name="logreg", weights=global_weights, request=request)
    metrics = {
        "num-examples": result.num_examples,
        "train-loss": result.train_loss,
        "steps": result.steps,
        "epsilon": result.epsilon,
        "delta": result.delta,
        "noise-multiplier": result.noise_multiplier,
        "sample-rate": result.sample_rate,
    }
    content = encode_reply(weights=result.weights, metrics=metrics)

    assert set(content.keys()) == {"weights", "metrics"}
    assert not content.config_records
    arrays = content.array_records["weights"].to_numpy_ndarrays()
    assert [a.shape for a in arrays] == [w.shape for w in global_weights]
    assert all(a.dtype == np.float32 for a in arrays)
    assert set(content.metric_records["metrics"].keys()) <= set(REPLY_METRIC_KEYS)
    # The node's own records appear nowhere: no array has a data-shaped dimension.
    n = int(runtime.x.shape[0])
    assert all(n not in a.shape for a in arrays)
    # The node refuses to put anything else in a reply.
    with pytest.raises(ValueError, match="expected keys among"):
        encode_reply(weights=result.weights, metrics={**metrics, "labels": 1.0})


def test_the_server_drops_what_it_did_not_ask_for():
    weights = [np.zeros((2, 2), dtype=np.float32)]
    content = RecordDict(
        {
            "weights": ArrayRecord(weights),
            "metrics": MetricRecord({"num-examples": 5, "patient-age": 71.0}),
        }
    )
    reply = decode_reply_content(content)
    assert reply.metrics == {"num-examples": 5.0}
