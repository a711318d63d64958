"""Data and a small CNN builder shared by the examples (scikit-learn's digits, no download)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from mlflow_hpo import space
from mlflow_hpo.layers import LayerGuard

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def default_experiment(name: str) -> str | None:
    """``name`` when run as a script; under ``mlflow run`` (``MLFLOW_RUN_ID`` is set), the
    study nests under the project's run, in the experiment ``mlflow run`` chose."""
    return None if os.environ.get("MLFLOW_RUN_ID") else name


def digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """8x8 grey images scaled to [0, 1] as (N, 8, 8, 1), split 80/20, stratified."""
    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    return tuple(
        train_test_split(x, data.target, test_size=0.2, random_state=seed, stratify=data.target)
    )  # type: ignore[return-value]


def build_cnn(
    n_blocks: int, filters: int, kernel: int, pool: bool, learning_rate: float, dense: int = 32
) -> keras.Model:
    """Conv/pool blocks that ``LayerGuard`` skips once the 8x8 image would shrink too far.

    Deep or wide-kernel configurations cannot fit every block into 8x8 pixels: the skipped
    layers become the trial's output exception list, logged automatically.
    """
    model = keras.Sequential([keras.Input((8, 8, 1))])
    guard = LayerGuard(model)
    for i in range(1, n_blocks + 1):
        guard.add(
            keras.layers.Conv2D(filters, kernel, activation="relu"), name=f"Convolutional_L{i}"
        )
        if pool:
            guard.add(keras.layers.MaxPooling2D(2), name=f"Pooling_L{i}")
    model.add(keras.layers.Flatten())
    model.add(keras.layers.Dense(dense, activation="relu"))
    model.add(keras.layers.Dense(10, activation="softmax"))
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


@space.builder
def build_space_cnn(hp: space.HP) -> keras.Model:
    """The same CNN as ``build_cnn``, declared once for Optuna, Keras Tuner and samplers."""
    return build_cnn(
        n_blocks=hp.int("n_blocks", 1, 3),
        filters=hp.choice("filters", [8, 16, 32]),
        kernel=hp.int("kernel", 2, 4),
        pool=hp.boolean("pool"),
        learning_rate=hp.float("learning_rate", 1e-3, 3e-2, log=True),
    )
