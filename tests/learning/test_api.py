"""Pin the public names of p2pfl.learning."""

import p2pfl.learning as learning

PUBLIC = {
    "CNN",
    "CNNConfig",
    "DIGITS_TRAIN_CONFIG",
    "MLP",
    "MLPConfig",
    "Aggregate",
    "ClassificationTask",
    "DigitsArrays",
    "FedAdam",
    "FedAvg",
    "FedProx",
    "FedYogi",
    "GroupResult",
    "PartitionSpec",
    "Strategy",
    "StrategyState",
    "Task",
    "TaskFactory",
    "TensorData",
    "TrainConfig",
    "aggregate",
    "call_task_factory",
    "digits_model",
    "digits_task",
    "digits_tasks",
    "dirichlet",
    "evaluate_classifier",
    "hash_vector",
    "iid",
    "label_skew",
    "load_digits_arrays",
    "load_task_factory",
    "local_update",
    "make_strategy",
    "model_to_vector",
    "num_params",
    "parse_partition",
    "quantity_skew",
    "resolve_device",
    "train_classifier",
    "vector_layout",
    "vector_to_model",
}


def test_public_names():
    assert set(learning.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(learning, name) is not None
