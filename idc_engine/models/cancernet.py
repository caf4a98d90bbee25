"""CancerNet: the PyImageSearch IDC patch classifier, layer for layer (A. Rosebrock, "Breast
cancer classification with Keras and Deep Learning", PyImageSearch, 2019).

Kept exactly as the tutorial builds it so that results compare with the tutorial lineage: every
conv is a 3x3 "same" SeparableConv2D followed by ReLU and then BatchNormalization (BN after the
activation, as in the tutorial), three blocks of 1, 2 and 3 convs with 32, 64 and 128 filters,
then Flatten -> Dense(256) -> ReLU -> BN -> Dropout(0.5) -> Dense(num_classes) -> softmax.

For a 48x48 or 50x50 input the last feature map is 6x6x128 = 4608 values, so the model has
1,235,133 parameters (1,233,533 trainable + 1,600 BN moving statistics), 95.5% of them in the
Dense(4608 -> 256) layer.

Mixed precision: the logits Dense and the softmax are float32 layers, so under a
"mixed_float16"/"mixed_bfloat16" global policy the convs compute in half precision while the
probabilities (and the loss computed from them) stay float32.
"""

import keras
from keras import layers


def _sepconv_relu_bn(x, filters: int, block: int, index: int):
    """SeparableConv2D 3x3 same -> ReLU -> BatchNorm(axis=-1), named block{b}_{kind}{i}."""
    x = layers.SeparableConv2D(filters, (3, 3), padding="same", name=f"block{block}_sepconv{index}")(x)
    x = layers.Activation("relu", name=f"block{block}_relu{index}")(x)
    return layers.BatchNormalization(axis=-1, name=f"block{block}_bn{index}")(x)


def cancernet(input_shape=(48, 48, 3), num_classes: int = 2, name: str = "cancernet") -> keras.Model:
    """Builds CancerNet.

    Args:
      input_shape: (height, width, channels), channels last. The tutorial resizes to 48x48;
        the native 50x50 patches give the same parameter count (50 -> 25 -> 12 -> 6).
      num_classes: width of the output (2: 0 = non-IDC, 1 = IDC).
      name: model name.

    Returns:
      A functional keras.Model mapping float32 [B, H, W, C] images (already normalized) to
      float32 [B, num_classes] class probabilities (rows sum to 1). The pre-softmax values are
      the output of the layer named "logits".
    """
    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = inputs
    for block, (filters, num_convs) in enumerate(((32, 1), (64, 2), (128, 3)), start=1):
        for index in range(1, num_convs + 1):
            x = _sepconv_relu_bn(x, filters, block, index)
        x = layers.MaxPooling2D(pool_size=(2, 2), name=f"block{block}_pool")(x)
        x = layers.Dropout(0.25, name=f"block{block}_dropout")(x)

    x = layers.Flatten(name="head_flatten")(x)
    x = layers.Dense(256, name="head_dense")(x)
    x = layers.Activation("relu", name="head_relu")(x)
    x = layers.BatchNormalization(axis=-1, name="head_bn")(x)
    x = layers.Dropout(0.5, name="head_dropout")(x)
    # float32 even under a mixed policy: a half-precision softmax saturates and its loss underflows.
    x = layers.Dense(num_classes, dtype="float32", name="logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)
