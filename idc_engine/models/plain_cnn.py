"""A small plain-convolution baseline, to tell what CancerNet's separable convs and big Dense buy.

Three blocks of Conv2D 3x3 -> BatchNorm -> ReLU -> MaxPool 2x2 with 32, 64 and 128 filters, then
global average pooling, Dropout(0.5) and Dense(num_classes) -> softmax: 94,178 parameters for
any input size (global pooling makes the head independent of H and W), about 13x fewer than
CancerNet. The convs carry no bias because the BatchNorm after each one has its own offset.

Same output convention as CancerNet: float32 "logits" Dense and float32 "probabilities" softmax,
so a mixed-precision policy never reaches the output.
"""

import keras
from keras import layers


def plain_cnn(input_shape=(50, 50, 3), num_classes: int = 2, name: str = "plain_cnn") -> keras.Model:
    """Builds the plain CNN baseline.

    Args:
      input_shape: (height, width, channels), channels last; height and width at least 8.
      num_classes: width of the output.
      name: model name.

    Returns:
      A functional keras.Model mapping float32 [B, H, W, C] normalized images to float32
      [B, num_classes] class probabilities.
    """
    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = inputs
    for block, filters in enumerate((32, 64, 128), start=1):
        x = layers.Conv2D(filters, (3, 3), padding="same", use_bias=False, name=f"block{block}_conv")(x)
        x = layers.BatchNormalization(axis=-1, name=f"block{block}_bn")(x)
        x = layers.Activation("relu", name=f"block{block}_relu")(x)
        x = layers.MaxPooling2D(pool_size=(2, 2), name=f"block{block}_pool")(x)

    x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    x = layers.Dropout(0.5, name="head_dropout")(x)
    x = layers.Dense(num_classes, dtype="float32", name="logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)
