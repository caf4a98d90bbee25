"""Models: CancerNet pinned layer by layer, the shared output contract, mixed precision, backbones
(local weights files, freezing), registry errors, and a two-step fit of every registered model."""

import keras
import numpy as np
import pytest

from idc_engine.models import MODELS, build_model, cancernet, set_backbone_trainable

# (name, class, key config) of every CancerNet layer, in order: the PyImageSearch tutorial's
# architecture (Rosebrock, "Breast cancer classification with Keras and Deep Learning", 2019).
SEPCONV = dict(kernel_size=(3, 3), padding="same", strides=(1, 1), depth_multiplier=1, activation="linear")
POOL = dict(pool_size=(2, 2), strides=(2, 2), padding="valid")


def _conv_unit(block, index, filters):
    return [(f"block{block}_sepconv{index}", "SeparableConv2D", dict(SEPCONV, filters=filters)),
            (f"block{block}_relu{index}", "Activation", dict(activation="relu")),
            (f"block{block}_bn{index}", "BatchNormalization", dict(axis=-1))]


def _pool_dropout(block):
    return [(f"block{block}_pool", "MaxPooling2D", POOL),
            (f"block{block}_dropout", "Dropout", dict(rate=0.25))]


CANCERNET_LAYERS = (
    [("images", "InputLayer", {})]
    + _conv_unit(1, 1, 32) + _pool_dropout(1)
    + _conv_unit(2, 1, 64) + _conv_unit(2, 2, 64) + _pool_dropout(2)
    + _conv_unit(3, 1, 128) + _conv_unit(3, 2, 128) + _conv_unit(3, 3, 128) + _pool_dropout(3)
    + [("head_flatten", "Flatten", {}),
       ("head_dense", "Dense", dict(units=256, activation="linear")),
       ("head_relu", "Activation", dict(activation="relu")),
       ("head_bn", "BatchNormalization", dict(axis=-1)),
       ("head_dropout", "Dropout", dict(rate=0.5)),
       ("logits", "Dense", dict(units=2, activation="linear")),
       ("probabilities", "Activation", dict(activation="softmax"))])

# By hand, SeparableConv2D(c_in -> c_out) = 9*c_in (depthwise) + c_in*c_out + c_out, BN(c) = 4c:
#   block 1: 155 + 128 = 283
#   block 2: 2,400 + 256 + 4,736 + 256 = 7,648
#   block 3: 8,896 + 512 + 2 * (17,664 + 512) = 45,760
#   head:    Dense(4608 -> 256) 1,179,904 + BN 1,024 + Dense(256 -> 2) 514 = 1,181,442
# 48 -> 24 -> 12 -> 6 and 50 -> 25 -> 12 -> 6, so 6*6*128 = 4608 features either way.
CANCERNET_PARAMS = 1_235_133
CANCERNET_NON_TRAINABLE = 1_600  # BN moving mean and variance: 2 * (32 + 64*2 + 128*3 + 256)
HEAD_DENSE_PARAMS = 4608 * 256 + 256


@pytest.fixture(autouse=True)
def float32_policy():
    """Every test starts under float32 whatever ran before it (the Keras policy is
    process-global); the previous one is put back."""
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


@pytest.fixture
def mixed_float16(float32_policy):
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield  # float32_policy restores the policy


def _images(batch, size, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype("float32")


def _num_weights(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


# --- CancerNet, exactly ---------------------------------------------------------------------------

def test_cancernet_layers_are_pinned():
    model = cancernet()
    assert [(layer.name, type(layer).__name__) for layer in model.layers] == \
        [(name, cls) for name, cls, _ in CANCERNET_LAYERS]
    for layer, (name, _, expected) in zip(model.layers, CANCERNET_LAYERS):
        config = layer.get_config()
        assert {key: config[key] for key in expected} == expected, name


@pytest.mark.parametrize("size", [48, 50])
def test_cancernet_parameter_count(size):
    model = cancernet((size, size, 3))
    assert model.count_params() == CANCERNET_PARAMS
    # non_trainable_weights, not _variables: those also hold the Dropout layers' seed-generator states.
    assert _num_weights(model.non_trainable_weights) == CANCERNET_NON_TRAINABLE
    assert model.get_layer("head_flatten").output.shape == (None, 4608)
    dense = model.get_layer("head_dense")
    assert tuple(dense.kernel.shape) == (4608, 256)
    assert dense.count_params() == HEAD_DENSE_PARAMS
    assert 0.95 < HEAD_DENSE_PARAMS / CANCERNET_PARAMS < 0.96  # "95% of them in Dense(4608->256)"


def test_cancernet_mixed_float16_computes_in_half_and_outputs_float32(mixed_float16):
    model = cancernet((48, 48, 3))
    for layer in model.layers:
        if isinstance(layer, keras.layers.SeparableConv2D):
            assert layer.compute_dtype == "float16", layer.name
            assert layer.variable_dtype == "float32", layer.name
    assert model.get_layer("block3_bn3").output.dtype == "float16"
    assert model.get_layer("logits").compute_dtype == "float32"
    assert model.get_layer("probabilities").compute_dtype == "float32"
    probabilities = model(_images(3, 48), training=False)
    assert probabilities.dtype == "float32"
    np.testing.assert_allclose(np.sum(probabilities, axis=-1), 1.0, rtol=1e-5)


# --- every registered model -----------------------------------------------------------------------

# name -> (input size, backbone_input_size, run_eagerly). Smallest useful sizes: backbones need
# >= 32, and MobileNetV2 resizes 24 -> 32 so the Resizing layer runs in the graph too. ResNet50
# fits eagerly: tracing its train step alone takes ~30 s on 2 cores, and its layers are the same
# kinds MobileNetV2 already runs in graph mode.
FIT_CASES = {"cancernet": (48, None, False), "plain_cnn": (50, None, False),
             "mobilenet_v2": (24, 32, False), "resnet50": (32, None, True)}


def test_fit_cases_cover_the_registry():
    assert set(FIT_CASES) == set(MODELS)


@pytest.mark.parametrize("name", sorted(FIT_CASES))
def test_every_model_outputs_probabilities_and_fits(name):
    size, backbone_input_size, run_eagerly = FIT_CASES[name]
    keras.utils.set_random_seed(0)
    model = build_model(name, (size, size, 3), backbone_input_size=backbone_input_size)
    assert model.get_layer("logits").dtype == "float32"
    probabilities = np.asarray(model(_images(4, size), training=False))
    assert probabilities.shape == (4, 2) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-5)

    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  jit_compile=False, run_eagerly=run_eagerly)
    labels = np.array([0, 1, 0, 1])
    history = model.fit(_images(4, size, seed=1), labels, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


# --- backbones ------------------------------------------------------------------------------------

def test_backbone_loads_a_local_weights_file(tmp_path):
    keras.utils.set_random_seed(1)
    source = build_model("mobilenet_v2", (32, 32, 3)).get_layer("backbone")
    path = str(tmp_path / "mobilenet_v2_notop.weights.h5")
    source.save_weights(path)

    keras.utils.set_random_seed(2)
    random = build_model("mobilenet_v2", (32, 32, 3)).get_layer("backbone")
    assert not np.allclose(random.weights[0], source.weights[0])  # the comparison below means something

    # Another input size and a resize in front: conv weights do not depend on the spatial size.
    loaded = build_model("mobilenet_v2", (40, 40, 3), weights_path=path, backbone_input_size=48)
    loaded = loaded.get_layer("backbone")
    assert len(loaded.weights) == len(source.weights)
    for expected, actual in zip(source.weights, loaded.weights):
        np.testing.assert_array_equal(np.asarray(actual), np.asarray(expected), err_msg=expected.path)


def test_set_backbone_trainable_toggles_and_frozen_batchnorm_uses_moving_statistics():
    model = build_model("mobilenet_v2", (32, 32, 3))
    backbone = model.get_layer("backbone")
    batchnorms = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    all_trainable = len(model.trainable_variables)
    head = 2  # logits kernel and bias

    assert set_backbone_trainable(model, False) is True
    assert len(model.trainable_variables) == head
    # Frozen BN runs in inference mode even in a training call: same output, statistics untouched.
    images = _images(4, 32)
    moving_mean = batchnorms[0].moving_mean.numpy()
    np.testing.assert_allclose(model(images, training=True), model(images, training=False), atol=1e-6)
    np.testing.assert_array_equal(batchnorms[0].moving_mean, moving_mean)

    assert set_backbone_trainable(model, True) is True
    assert len(model.trainable_variables) == all_trainable
    model(images, training=True)
    assert not np.allclose(batchnorms[0].moving_mean, moving_mean)

    set_backbone_trainable(model, True, freeze_batchnorm=True)
    assert len(model.trainable_variables) == all_trainable - 2 * len(batchnorms)  # gamma, beta each


def test_set_backbone_trainable_is_a_no_op_without_backbone():
    model = cancernet()
    before = len(model.trainable_variables)
    assert set_backbone_trainable(model, False) is False
    assert len(model.trainable_variables) == before


def test_backbone_mixed_float16_outputs_float32(mixed_float16):
    model = build_model("mobilenet_v2", (32, 32, 3))
    assert model.get_layer("backbone").compute_dtype == "float16"
    assert model(_images(2, 32), training=False).dtype == "float32"


# --- registry errors ------------------------------------------------------------------------------

def test_build_model_errors(tmp_path):
    with pytest.raises(ValueError, match="known models: cancernet, mobilenet_v2, plain_cnn, resnet50"):
        build_model("alexnet", (50, 50, 3))
    existing = tmp_path / "w.weights.h5"
    existing.write_bytes(b"")
    with pytest.raises(ValueError, match="weights_path"):
        build_model("cancernet", (48, 48, 3), weights_path=str(existing))
    with pytest.raises(ValueError, match="backbone_input_size"):
        build_model("plain_cnn", (50, 50, 3), backbone_input_size=96)
    with pytest.raises(ValueError, match="weights_path='imagenet'"):
        build_model("mobilenet_v2", (50, 50, 3), weights_path="imagenet")
    with pytest.raises(ValueError, match="weights_path=.*does not exist"):
        build_model("resnet50", (50, 50, 3), weights_path=str(tmp_path / "missing.weights.h5"))
    with pytest.raises(ValueError, match="backbone_input_size=16"):
        build_model("mobilenet_v2", (50, 50, 3), backbone_input_size=16)
    with pytest.raises(ValueError, match="set backbone_input_size"):
        build_model("mobilenet_v2", (24, 24, 3))


@pytest.mark.parametrize("shape", [(8, 6, 6, 5), (16, 7)])
def test_fused_batchnorm_matches_keras_batchnorm(shape):
    """Outputs, gradients and moving statistics of the fused training path equal Keras' own."""
    import tensorflow as tf

    from idc_engine.models.fused_batchnorm import FusedBatchNormalization, fuse_batchnorm

    def build():
        keras.utils.set_random_seed(0)
        inputs = keras.Input(shape[1:])
        outputs = keras.layers.BatchNormalization(momentum=0.9)(keras.layers.Dense(shape[-1])(inputs))
        return keras.Model(inputs, outputs)

    stock, fused = build(), build()
    assert fuse_batchnorm(fused) == 1 and isinstance(fused.layers[-1], FusedBatchNormalization)
    x = tf.random.stateless_normal(shape, seed=[1, 2]) * 3.0 + 1.0
    results = []
    for model in (stock, fused):
        with tf.GradientTape() as tape:
            y = model(x, training=True)
            loss = tf.reduce_sum(tf.square(y) * tf.range(shape[-1], dtype=tf.float32))
        grads = tape.gradient(loss, model.trainable_variables)
        results.append((y, grads, [v.numpy() for v in model.layers[-1].non_trainable_variables]))
    (y_a, g_a, s_a), (y_b, g_b, s_b) = results
    np.testing.assert_allclose(y_a, y_b, rtol=1e-4, atol=1e-5)
    # BatchNorm's backward pass subtracts near-equal float32 sums: both paths sit ~2e-4 of the
    # gradients' scale from a float64 reference (the Dense bias gradient, exactly 0 in theory,
    # is pure rounding in both), so compare at that scale
    scale = max(np.abs(g).max() for g in g_a)
    for a, b in zip(g_a, g_b):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-3 * scale)
    for a, b in zip(s_a, s_b):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stock(x, training=False), fused(x, training=False), rtol=1e-4, atol=1e-5)
