"""Devices, the tf.distribute strategy, and the "auto" choices of precision and XLA.

Every "auto" decision is returned with its reason, and the trainer logs both. On CPU the choices
were measured on this project's 2-core AMD EPYC (avx512_bf16, no AMX):
- XLA: benchmarks/train_step.py ran CancerNet's step with it at 0.06x float32's rate
  (docs/benchmarks/train_step.json), so it stays off.
- Precision: mixed_bfloat16 trained 1.19x faster than float32 there (train_step.json), and
  benchmarks/precision.py found it non-inferior in accuracy by a rule fixed before the runs
  (docs/benchmarks/precision_cpu.json: 5-fold cross-validation of the demo tree, 3 seeds, the
  same folds and seeds at both precisions; the 95% interval of the paired difference in pooled
  ROC-AUC must lie above -0.01; it was +0.0000 [-0.0021, +0.0018]). So auto takes it on CPUs with
  bfloat16 instructions (avx512_bf16 or amx_bf16); on others it would be emulated, slower than
  float32, which auto keeps there.
On GPUs the choices follow the project's aim (CancerNet trained with XLA and mixed precision)
and have NOT been measured in this project: the reason logged says so and names the command
that measures them (`MEASURE_ON_GPU`).
"""

import json
import os

import keras
import tensorflow as tf

from idc_engine.training.config import ConfigError

# What measures the GPU choices side by side (float32 vs mixed precision, XLA off vs on).
MEASURE_ON_GPU = ("python -m benchmarks.train_step "
                  "--settings=xla,mixed_float16,mixed_bfloat16,xla_mixed_float16,"
                  "xla_mixed_bfloat16 --data_dir=DATA")


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


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files: the chief, or worker 0 of a cluster without
    one, or the only process of a single-host run."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())


def device_kind() -> str:
    return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"


def gpu_compute_capabilities() -> list[tuple[int, int] | None]:
    """(major, minor) of every visible GPU, None where TensorFlow does not report it."""
    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        capability = details.get("compute_capability")
        capabilities.append(tuple(capability) if capability else None)
    return capabilities


def _not_measured(choice: str) -> str:
    return (f"{choice}; this GPU choice was not measured in this project: measure it with "
            f"{MEASURE_ON_GPU}")


# The CPU instructions that run bfloat16 dot products natively (/proc/cpuinfo flags).
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
CPU_BFLOAT16_EVIDENCE = (
    "trained 1.19x faster than float32 on a 2-core AMD EPYC with avx512_bf16 "
    "(benchmarks/train_step.py) and non-inferior in accuracy: paired 5-fold cross-validation at "
    "3 seeds, pooled ROC-AUC difference +0.0000 [95% -0.0021, +0.0018], margin -0.01 "
    "(benchmarks/precision.py, docs/benchmarks/precision_cpu.json)")


def cpu_bfloat16_flags() -> list[str]:
    """Which of BFLOAT16_CPU_FLAGS this machine's CPU has ([] where /proc/cpuinfo is absent)."""
    try:
        with open("/proc/cpuinfo") as f:
            present = next((line.split(":", 1)[1].split() for line in f
                            if line.split(":", 1)[0].strip() == "flags"), [])
    except OSError:
        return []
    return [flag for flag in BFLOAT16_CPU_FLAGS if flag in present]


def resolve_precision(precision: str,
                      gpu_capabilities: list[tuple[int, int] | None] | None = None,
                      cpu_bfloat16: list[str] | None = None) -> tuple[str, str]:
    """(keras mixed-precision policy name, reason).

    gpu_capabilities: compute capability of each GPU ([] on a CPU machine); None asks
    TensorFlow. With several GPUs the lowest decides (every replica runs the same policy).
    cpu_bfloat16: the CPU's bfloat16 instructions (cpu_bfloat16_flags()); None reads them.
    """
    if precision != "auto":
        return precision, "set by --precision"
    if gpu_capabilities is None:
        gpu_capabilities = gpu_compute_capabilities()
    if not gpu_capabilities:
        if cpu_bfloat16 is None:
            cpu_bfloat16 = cpu_bfloat16_flags()
        if cpu_bfloat16:
            return "mixed_bfloat16", (f"CPU with {', '.join(cpu_bfloat16)}: mixed_bfloat16 "
                                      f"{CPU_BFLOAT16_EVIDENCE}")
        return "float32", ("CPU without bfloat16 instructions (" + ", ".join(BFLOAT16_CPU_FLAGS)
                           + "): mixed_bfloat16 would be emulated, slower than float32; where "
                           "they are, it " + CPU_BFLOAT16_EVIDENCE)
    if None in gpu_capabilities:
        return "float32", _not_measured("GPU compute capability unknown: float32")
    capability = min(gpu_capabilities)
    shown = f"{capability[0]}.{capability[1]}"
    if capability >= (8, 0):
        # Tensor cores of compute capability 8.0+ run bfloat16 as fast as float16; bfloat16 has
        # float32's exponent range, so no loss scaling: no steps skipped on overflow and no
        # cross-replica overflow check.
        return "mixed_bfloat16", _not_measured(
            f"GPU compute capability {shown}: bfloat16 tensor cores, as fast as float16 there "
            "and without loss scaling")
    if capability >= (7, 0):
        return "mixed_float16", _not_measured(
            f"GPU compute capability {shown}: float16 tensor cores (bfloat16 needs 8.0)")
    return "float32", _not_measured(f"GPU compute capability {shown} has no tensor cores")


def resolve_xla(xla: str, model_name: str, num_gpus: int | None = None) -> tuple[bool, str]:
    """(jit_compile the per-replica step?, reason).

    num_gpus: GPUs visible; None asks TensorFlow. `model_name` only appears in the reason: on a
    GPU every model gets XLA.
    """
    if xla != "auto":
        return xla == "on", "set by --xla"
    if num_gpus is None:
        num_gpus = len(tf.config.list_physical_devices("GPU"))
    if num_gpus == 0:
        return False, ("CPU: XLA measured at 0.06x the rate without it for CancerNet on a "
                       "2-core CPU by benchmarks/train_step.py")
    # tensorflow/tensorflow#59772 and #60312 disagree on depthwise convolutions under XLA on
    # GPUs (faster on some setups, much slower on one): only a measurement here can settle it.
    return True, _not_measured(f"GPU: XLA on for {model_name}")


def set_precision_policy(policy: str) -> None:
    keras.mixed_precision.set_global_policy(policy)
