"""Stage 3, batches -> probabilities: every classifier the engine trains, built by name.
Imports idc_engine.data only.

    model = build_model("cancernet", input_shape=(50, 50, 3))
    model = build_model("mobilenet_v2", (50, 50, 3), weights_path="notop.weights.h5", backbone_input_size=96)

    cancernet.py        CancerNet, the PyImageSearch IDC classifier, layer for layer
    plain_cnn.py        a small plain CNN baseline
    backbones.py        MobileNetV2 / ResNet50 from keras.applications with local weights only
    fused_batchnorm.py  BatchNormalization trained through TensorFlow's fused kernel
    preprocessing.py    uint8 patches -> normalized model input: the one definition of it

All models share one contract: input float32 [B, H, W, C] images, already normalized by
preprocessing.model_input; output float32 [B, num_classes] softmax probabilities from a layer named
"probabilities", whose input is a float32 Dense named "logits". Under a mixed-precision global
policy the body computes in half precision and the output stays float32.
"""

from idc_engine.models.backbones import mobilenet_v2, resnet50, set_backbone_trainable
from idc_engine.models.cancernet import cancernet
from idc_engine.models.fused_batchnorm import fuse_batchnorm  # noqa: F401  (re-exported)
from idc_engine.models.plain_cnn import plain_cnn

MODELS = {
    "cancernet": cancernet,
    "plain_cnn": plain_cnn,
    "mobilenet_v2": mobilenet_v2,
    "resnet50": resnet50,
}
# Models with a keras.applications backbone: only these take weights_path and backbone_input_size.
BACKBONE_MODELS = frozenset({"mobilenet_v2", "resnet50"})


def build_model(name: str, input_shape, num_classes: int = 2, weights_path=None, backbone_input_size=None):
    """Builds the registered model `name`.

    Args:
      name: a key of MODELS.
      input_shape: (height, width, channels) of the input images.
      num_classes: width of the output.
      weights_path: local weights file for the backbone (backbone models only; never "imagenet").
      backbone_input_size: square size the input is resized to before the backbone (backbone
        models only).

    Returns:
      keras.Model: float32 [B, H, W, C] -> float32 [B, num_classes] probabilities.

    Raises:
      ValueError: unknown name; weights_path or backbone_input_size given to a model without a
        backbone; weights_path "imagenet" or not an existing file.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    if name not in BACKBONE_MODELS:
        if weights_path is not None:
            raise ValueError(f"weights_path is only for models with a backbone "
                             f"({', '.join(sorted(BACKBONE_MODELS))}); {name!r} takes none.")
        if backbone_input_size is not None:
            raise ValueError(f"backbone_input_size is only for models with a backbone "
                             f"({', '.join(sorted(BACKBONE_MODELS))}); {name!r} has none.")
        return MODELS[name](tuple(input_shape), num_classes=num_classes)
    return MODELS[name](tuple(input_shape), num_classes=num_classes, weights_path=weights_path,
                        backbone_input_size=backbone_input_size)


__all__ = ["BACKBONE_MODELS", "MODELS", "build_model", "cancernet", "mobilenet_v2", "plain_cnn",
           "resnet50", "set_backbone_trainable"]


def set_batchnorm_momentum(model, momentum: float) -> int:
    """Sets the moving-average momentum of every BatchNormalization layer, nested ones included;
    returns how many layers it changed.

    The trainer recomputes the moving statistics before they are used
    (idc_engine/training/batchnorm.py), so the momentum only shapes them in between.
    """
    import keras

    changed = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum
            changed += 1
    return changed
