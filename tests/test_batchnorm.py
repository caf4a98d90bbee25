"""BatchNorm moving statistics recomputed from the current weights (training/batchnorm.py):
checked against numpy's statistics of the layers' inputs, against the training-mode model, and
over two replicas of a MirroredStrategy (a subprocess: logical CPU devices need a fresh
TensorFlow)."""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import tensorflow as tf

from idc_engine.training import batchnorm


def _model(dropout: float, seed: int = 0) -> keras.Model:
    """Conv -> ReLU -> BN -> Dropout -> Dense -> ReLU -> BN -> Dense: BN after ReLU, as in
    CancerNet, with the small input variances that make the initial moving variance (1) wrong."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(keras.layers.ReLU()(x))
    x = keras.layers.Dropout(dropout)(x)
    x = keras.layers.Dense(6)(keras.layers.Flatten()(x))
    x = keras.layers.BatchNormalization(name="bn2")(keras.layers.ReLU()(x))
    return keras.Model(inputs, keras.layers.Dense(2)(x))


def _recompute(model, batches: list) -> None:
    strategy = tf.distribute.get_strategy()
    batches = tf.constant(np.stack(batches))
    batchnorm.BatchNormRecomputer(
        model, strategy, lambda fn, k: strategy.run(fn, args=(batches[k],)), len(batches))()


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 8, 8, 3)).astype(np.float32)


def test_moving_statistics_are_the_population_statistics_of_the_layer_input():
    model = _model(dropout=0.5)
    batches = [_images(16, 1), 3.0 + 2.0 * _images(16, 2)]  # batches of unlike statistics
    _recompute(model, batches)
    bn1 = model.get_layer("bn1")
    inputs = keras.Model(model.input, bn1.input)(np.concatenate(batches)).numpy()
    inputs = inputs.reshape(-1, 4).astype(np.float64)
    np.testing.assert_allclose(bn1.moving_mean.numpy(), inputs.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn1.moving_variance.numpy(), inputs.var(0), rtol=1e-4, atol=1e-6)
    assert bn1.momentum == 0.99 and model.layers[4].rate == 0.5  # restored after


def test_inference_mode_then_equals_training_mode_without_dropout():
    images = _images(64, 3)
    model, twin = _model(dropout=0.5), _model(dropout=0.0)
    twin.set_weights(model.get_weights())
    training_mode = twin(images, training=True).numpy()  # batch statistics, no dropout
    assert not np.allclose(model(images, training=False).numpy(), training_mode, atol=1e-2)
    _recompute(model, [images])
    np.testing.assert_allclose(model(images, training=False).numpy(), training_mode,
                               rtol=1e-4, atol=1e-4)


def test_replicas_of_a_mirrored_strategy_end_with_the_global_statistics():
    """Two replicas see unlike halves of each batch; both copies must hold the statistics of
    the whole data, not of their own half."""
    script = textwrap.dedent("""
        import numpy as np, tensorflow as tf, keras
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from idc_engine.training import batchnorm
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        rng = np.random.default_rng(0)
        halves = [rng.normal(size=(2, 16, 5)).astype(np.float32) + 4.0 * r for r in range(2)]
        with strategy.scope():
            model = keras.Sequential([keras.Input((5,)), keras.layers.BatchNormalization()])
        def run_replicas(fn, k):
            values = strategy.experimental_distribute_values_from_function(
                lambda ctx: tf.gather(tf.constant(halves[ctx.replica_id_in_sync_group]), k))
            return strategy.run(fn, args=(values,))
        batchnorm.BatchNormRecomputer(model, strategy, run_replicas, 2)()
        data = np.concatenate([h.reshape(-1, 5) for h in halves]).astype(np.float64)
        layer = model.layers[0]
        for name, want in (("moving_mean", data.mean(0)), ("moving_variance", data.var(0))):
            for copy in strategy.experimental_local_results(getattr(layer, name)):
                np.testing.assert_allclose(copy.numpy(), want, rtol=1e-5, atol=1e-5)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
