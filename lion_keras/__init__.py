"""Lion for Keras 3: ``lion_keras.Lion``, a drop-in for ``keras.optimizers.Lion`` on every backend.

It runs ``lion_core``'s rule through ``keras.ops`` (and ``torch._foreach_*`` ops on the PyTorch
backend), keeps everything that Keras' base optimizer does (clipping, weight decay, EMA, gradient
accumulation, loss scaling, schedules, saving), and adds the core's variants: ``cautious``, fully
decoupled weight decay (``decouple_lr``, ``max_lr``), ``momentum_dtype`` (``"int8"``: 8-bit blockwise
momentum) and ``stochastic_rounding`` for bfloat16 variables, with a saved ``seed``.

Example (the README's Keras example; ``tests/keras/test_training.py`` runs it as written)::

    import keras
    from sklearn.datasets import load_digits

    import lion_keras

    x, y = load_digits(return_X_y=True)  # 8x8 images of digits that ship with scikit-learn
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(10)])
    model.compile(optimizer=lion_keras.Lion(learning_rate=3e-3, weight_decay=0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history = model.fit(x / 16.0, y, epochs=5, batch_size=128, verbose=0)
    print(f"accuracy after 5 epochs: {history.history['accuracy'][-1]:.3f}")

References:
  Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675.
"""

from ._optimizer import Lion

__all__ = ["Lion"]
