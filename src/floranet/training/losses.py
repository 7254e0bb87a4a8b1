"""The loss and optimizer every stage compiles with."""

from __future__ import annotations

from typing import Any

import keras

from floranet.config import TrainConfig


def compile_model(model: keras.Model, learning_rate: Any, config: TrainConfig, *, steps_per_execution: int = 1) -> None:
    """Adam at ``learning_rate`` (a float or a schedule), sparse cross-entropy (label-smoothed if set), accuracy.

    ``steps_per_execution`` > 1 runs that many batches per call of the compiled step: for small models (a head on
    cached features) the per-call overhead otherwise outweighs the compute.
    """
    # Label smoothing needs one-hot targets, so it is applied inside a loss that takes int labels.
    loss: keras.losses.Loss = keras.losses.SparseCategoricalCrossentropy()
    if config.label_smoothing:
        loss = SmoothedSparseCE(config.label_smoothing)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=loss,
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )


# Registered (under the name earlier versions used) so checkpoints of a compiled model reload without
# custom_objects, including those of runs started before the rename.
@keras.saving.register_keras_serializable("floranet", name="_SmoothedSparseCE")
class SmoothedSparseCE(keras.losses.Loss):
    """Categorical cross-entropy with label smoothing, on integer labels."""

    def __init__(self, smoothing: float = 0.0, name: str = "smoothed_sparse_ce", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.smoothing = smoothing

    def call(self, y_true: Any, y_pred: Any) -> Any:
        n = keras.ops.shape(y_pred)[-1]
        one_hot = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), n)
        return keras.losses.categorical_crossentropy(one_hot, y_pred, label_smoothing=self.smoothing)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "smoothing": self.smoothing}
