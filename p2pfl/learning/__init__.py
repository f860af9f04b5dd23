"""Learning layer: tasks, local training, partitions, strategies, model <-> vector.

Pure ML code with no networking. The federation layer uses it as follows: build the
round-0 model with ``task.model_factory(init_seed)`` and flatten it with
:func:`model_to_vector`; each round, compute :func:`local_update` with a
:class:`TrainConfig` (``prox_mu`` from the strategy), securely sum weighted updates
per group, and apply ``strategy.apply(global_vec, group_results, state)``, which is
bit-for-bit deterministic; :func:`hash_vector` names the resulting model.
"""

from .digits import (
    CNN,
    DIGITS_TRAIN_CONFIG,
    MLP,
    CNNConfig,
    DigitsArrays,
    MLPConfig,
    digits_model,
    digits_task,
    digits_tasks,
    load_digits_arrays,
)
from .loader import TaskFactory, call_task_factory, load_task_factory
from .partition import (
    PartitionSpec,
    dirichlet,
    iid,
    label_skew,
    parse_partition,
    quantity_skew,
)
from .strategy import (
    Aggregate,
    FedAdam,
    FedAvg,
    FedProx,
    FedYogi,
    GroupResult,
    Strategy,
    StrategyState,
    aggregate,
    hash_vector,
    make_strategy,
)
from .task import (
    ClassificationTask,
    Task,
    TensorData,
    TrainConfig,
    evaluate_classifier,
    local_update,
    resolve_device,
    train_classifier,
)
from .vector import model_to_vector, num_params, vector_layout, vector_to_model

__all__ = [
    "CNN",
    "DIGITS_TRAIN_CONFIG",
    "MLP",
    "Aggregate",
    "CNNConfig",
    "ClassificationTask",
    "DigitsArrays",
    "FedAdam",
    "FedAvg",
    "FedProx",
    "FedYogi",
    "GroupResult",
    "MLPConfig",
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
]
