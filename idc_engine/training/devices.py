"""Devices, the tf.distribute strategy, and the "auto" choices of precision and XLA.

Every "auto" decision is returned with its reason, and the trainer logs both: on this project's
CPU machines XLA made CancerNet 4-6x (up to 17x) slower and mixed_bfloat16 was no faster than
float32 (benchmarks/train_step.py), so neither is ever assumed to help.
"""

import json
import os

import keras
import tensorflow as tf

from idc_engine.training.config import ConfigError

# Models built from depthwise/separable convolutions, which XLA compiles poorly (measured 6-17x
# slower on CPU; tensorflow/tensorflow#59772 reports the same on GPUs).
DEPTHWISE_MODELS = ("cancernet", "mobilenet_v2")


def configure_cpu_devices(num_cpu_devices: int) -> None:
    """Splits the CPU into N logical devices so MirroredStrategy runs without GPUs.

    Must run before TensorFlow initializes its devices (before the first op).
    """
    if num_cpu_devices <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * num_cpu_devices)
    except RuntimeError as e:  # devices already initialized: only fine if already split
        if len(tf.config.list_logical_devices("CPU")) != num_cpu_devices:
            raise ConfigError(f"--num_cpu_devices={num_cpu_devices} must be set before "
                              f"TensorFlow starts: {e}") from e


def cluster_workers() -> int:
    """Number of workers (chief included) in TF_CONFIG, 0 when unset."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    cluster = config.get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def make_strategy(name: str, num_cpu_devices: int) -> tuple[tf.distribute.Strategy, str]:
    """The strategy for --strategy, and a one-line description of what it runs on."""
    gpus = tf.config.list_physical_devices("GPU")
    if name == "auto":
        if cluster_workers() > 1:
            name = "multi_worker"
        elif len(gpus) > 1 or num_cpu_devices > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "multi_worker":
        if not cluster_workers():
            raise ConfigError("--strategy=multi_worker needs TF_CONFIG with the cluster's workers")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return strategy, (f"MultiWorkerMirroredStrategy: {cluster_workers()} workers, "
                          f"{strategy.num_replicas_in_sync} replicas")
    if name == "mirrored":
        devices = ([d.name for d in tf.config.list_logical_devices("GPU")] if gpus
                   else [d.name for d in tf.config.list_logical_devices("CPU")])
        strategy = tf.distribute.MirroredStrategy(devices)
        return strategy, f"MirroredStrategy over {len(devices)} devices: {', '.join(devices)}"
    device = "/gpu:0" if gpus else "/cpu:0"
    return tf.distribute.OneDeviceStrategy(device), f"OneDeviceStrategy on {device}"


def device_kind() -> str:
    return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"


def _min_gpu_compute_capability() -> tuple[int, int] | None:
    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        if "compute_capability" in details:
            capabilities.append(tuple(details["compute_capability"]))
    return min(capabilities) if capabilities else None


def resolve_precision(precision: str) -> tuple[str, str]:
    """(keras mixed-precision policy name, reason)."""
    if precision != "auto":
        return precision, "set by --precision"
    if device_kind() == "CPU":
        return "float32", ("CPU: mixed_bfloat16 measured no faster than float32 for CancerNet "
                           "(benchmarks/train_step.py; 2-3x slower on CPUs without bfloat16 "
                           "units, BRIEF.md section 5)")
    capability = _min_gpu_compute_capability()
    if capability and capability >= (7, 0):
        return "mixed_float16", f"GPU compute capability {capability[0]}.{capability[1]} has tensor cores"
    return "float32", f"GPU compute capability {capability} has no float16 tensor cores"


def resolve_xla(xla: str, model_name: str) -> tuple[bool, str]:
    """(jit_compile the per-replica step?, reason)."""
    if xla != "auto":
        return xla == "on", "set by --xla"
    if device_kind() == "CPU":
        return False, "CPU: XLA measured 6-17x slower for CancerNet (separable convolutions)"
    if model_name in DEPTHWISE_MODELS:
        return False, (f"{model_name} is built from depthwise convolutions, which XLA compiles "
                       "poorly on GPUs too (tensorflow/tensorflow#59772); measure with "
                       "benchmarks.train_step and pass --xla=on if it wins")
    return True, "GPU and a model of dense convolutions: XLA fuses its elementwise work"


def set_precision_policy(policy: str) -> None:
    keras.mixed_precision.set_global_policy(policy)
