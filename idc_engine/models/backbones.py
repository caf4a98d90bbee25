"""Transfer-learning classifiers: a keras.applications backbone (MobileNetV2, ResNet50) plus a small head.

    model = mobilenet_v2((50, 50, 3), weights_path="~/weights/mobilenet_v2_notop.weights.h5",
                         backbone_input_size=96)
    set_backbone_trainable(model, False)   # phase 1: train the head only
    ...
    set_backbone_trainable(model, True)    # phase 2: fine-tune everything

Layout: images -> [Resizing to backbone_input_size] -> "backbone" (the keras.applications model
without its top, one nested layer so it can be frozen as a whole) -> GlobalAveragePooling2D ->
Dropout -> Dense(num_classes, float32) "logits" -> softmax (float32) "probabilities".

Weights are never downloaded (the training machines have no network): `weights_path=None` gives
a random initialization, otherwise it is a local file handed to keras.applications as
`weights=`, which calls `backbone.load_weights(path)`. Accepted files hold the weights of the
backbone alone (no top), for the same architecture:
  - `*.weights.h5` (Keras 3), e.g. written by `model.get_layer("backbone").save_weights(path)`.
    Matched by layer order and type, not by name, and independent of the input size (a
    backbone saved at 96x96 loads into one built at 32x32).
  - legacy Keras 2 `*.h5` / `*.hdf5`, e.g. the official
    `mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5` or
    `resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5` copied onto the machine by hand.
A file saved from the whole classifier (`model.save_weights`) does not fit the backbone alone:
Keras raises ValueError "... objects could not be loaded".

The model input is the engine's normalized float image, not the backbone's own ImageNet
preprocessing; with pretrained weights fine-tuning absorbs the difference.

Freezing: Keras 3 BatchNormalization uses batch statistics only when `training and
self.trainable`, so a frozen backbone (`trainable=False`) runs its BN layers in inference mode
(moving statistics, not updated) even inside a training step.
"""

import os

import keras
from keras import layers

BACKBONE_LAYER = "backbone"
MIN_BACKBONE_INPUT_SIZE = 32  # keras.applications' lower bound for both nets


def check_weights_path(weights_path) -> None:
    """Raises ValueError unless weights_path is None or an existing local file (never "imagenet")."""
    if weights_path is None:
        return
    if str(weights_path).lower() == "imagenet":
        raise ValueError("weights_path='imagenet' is not supported: nothing is downloaded at run time. "
                         "Pass None (random init) or the path of a local weights file.")
    if not os.path.isfile(os.path.expanduser(str(weights_path))):
        raise ValueError(f"weights_path={weights_path!r} does not exist or is not a file.")


def _backbone_classifier(application, input_shape, num_classes, weights_path, backbone_input_size,
                         dropout_rate, name) -> keras.Model:
    """images -> [Resizing] -> application(include_top=False) named "backbone" -> pooled head."""
    check_weights_path(weights_path)
    height, width, channels = input_shape
    inputs = keras.Input(shape=(height, width, channels), name="images")
    x = inputs
    if backbone_input_size is not None:
        size = int(backbone_input_size)
        if size < MIN_BACKBONE_INPUT_SIZE:
            raise ValueError(f"backbone_input_size={backbone_input_size} is below the minimum "
                             f"{MIN_BACKBONE_INPUT_SIZE} of keras.applications backbones.")
        # Both nets downsample 32x: a 50x50 patch ends as a 2x2 feature map, 96x96 as 3x3.
        # Upsampling first gives the deep layers some spatial extent to work with.
        x = layers.Resizing(size, size, interpolation="bilinear", name="resize")(x)
        height = width = size
    elif min(height, width) < MIN_BACKBONE_INPUT_SIZE:
        raise ValueError(f"input_shape={tuple(input_shape)} is smaller than "
                         f"{MIN_BACKBONE_INPUT_SIZE}x{MIN_BACKBONE_INPUT_SIZE}: set backbone_input_size.")

    weights = None if weights_path is None else os.path.expanduser(str(weights_path))
    backbone = application(input_shape=(height, width, channels), include_top=False, weights=weights,
                           name=BACKBONE_LAYER)
    x = backbone(x)
    x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    x = layers.Dropout(dropout_rate, name="head_dropout")(x)
    x = layers.Dense(num_classes, dtype="float32", name="logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)


def mobilenet_v2(input_shape=(50, 50, 3), num_classes: int = 2, weights_path=None,
                 backbone_input_size=None, dropout_rate: float = 0.2,
                 name: str = "mobilenet_v2") -> keras.Model:
    """MobileNetV2 (alpha 1.0, 2.26M backbone parameters) with a pooled softmax head.

    Args:
      input_shape: (height, width, channels) of the float32 normalized input images.
      num_classes: width of the output.
      weights_path: None (random init) or a local no-top weights file (see module docstring).
      backbone_input_size: if set (>= 32, e.g. 96), images are resized to this square size
        inside the model before the backbone; required when the input is smaller than 32.
      dropout_rate: dropout before the logits.
      name: model name.

    Returns:
      keras.Model: float32 [B, H, W, C] -> float32 [B, num_classes] probabilities; the backbone
      is the nested layer named "backbone".
    """
    return _backbone_classifier(keras.applications.MobileNetV2, input_shape, num_classes, weights_path,
                                backbone_input_size, dropout_rate, name)


def resnet50(input_shape=(50, 50, 3), num_classes: int = 2, weights_path=None, backbone_input_size=None,
             dropout_rate: float = 0.2, name: str = "resnet50") -> keras.Model:
    """ResNet50 (23.6M backbone parameters) with a pooled softmax head; arguments as mobilenet_v2."""
    return _backbone_classifier(keras.applications.ResNet50, input_shape, num_classes, weights_path,
                                backbone_input_size, dropout_rate, name)


def set_backbone_trainable(model: keras.Model, trainable: bool, freeze_batchnorm: bool = False) -> bool:
    """Freezes or unfreezes the nested "backbone" layer of `model`.

    Frozen, its BatchNorm layers run in inference mode (see module docstring). With
    `trainable=True, freeze_batchnorm=True` the backbone's BatchNorm layers stay frozen
    (inference mode, gamma/beta fixed): the usual advice when fine-tuning pretrained weights
    with small batches. For a randomly initialized backbone leave it False.

    The set of trainable variables changes, so afterwards: with `model.fit`, compile again; in a
    custom loop, retrace the step function, and build the optimizer on the variables of the
    unfrozen model (Keras 3 optimizers reject variables they were not built with).

    Returns:
      True if the model has a backbone and it was set, False (and nothing changed) otherwise.
    """
    try:
        backbone = model.get_layer(BACKBONE_LAYER)
    except ValueError:
        return False
    backbone.trainable = bool(trainable)
    if trainable and freeze_batchnorm:
        for layer in backbone.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.trainable = False
    return True
