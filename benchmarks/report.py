"""One measurement writer for every benchmark: a JSON file, TensorBoard runs, a printed table.

    report = BenchmarkReport("convert", output_dir, config={...})
    report.add("engine_patches_per_s", 12345.0)
    report.write()   # output_dir/convert.json and output_dir/tensorboard/convert/<setting>/

The JSON holds the figures, the machine, the commit and the flags; TensorBoard gets one run per
setting, the settings of a comparison on one chart, each rerun one more point
(benchmarks/tensorboard_runs.py; each benchmark's charts: benchmarks/charts.py).

Rates are medians over repetitions with warm-up excluded; ratios are taken between figures
measured side by side in the same run, because this machine is shared and noisy.
"""

import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import time

from benchmarks import charts as benchmark_charts
from benchmarks import tensorboard_runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def median_rate(run, items_per_run: int, repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Calls `run()` warmup + repeats times; returns (median items/s, all timed rates)."""
    for _ in range(warmup):
        run()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        rates.append(items_per_run / (time.perf_counter() - start))
    return statistics.median(rates), rates


# CPU features that change which precision is fast (bfloat16 dot products, AMX tiles)
_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")


def machine() -> dict:
    """The machine a report was measured on: CPU model and features, cores, memory, OS."""
    model, cpu_flags, memory_gb = platform.processor() or platform.machine(), None, None
    try:
        with open("/proc/cpuinfo") as f:
            info = [line.split(":", 1) for line in f if ":" in line]
        names = [value.strip() for key, value in info if key.strip() == "model name"]
        model = names[0] if names else model
        present = next((value.split() for key, value in info if key.strip() == "flags"), [])
        cpu_flags = [flag for flag in _CPU_FLAGS if flag in present]
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
        memory_gb = round(kb / 2**20, 1)
    except (OSError, StopIteration):  # not Linux: the platform module's answer
        pass
    return {"cpu_model": model, "cpu_flags": cpu_flags, "cpus": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(),
            "memory_gb": memory_gb, "platform": platform.platform(),
            "python": platform.python_version(), "gpus": gpu_names()}


def gpu_names() -> list[str]:
    """NVIDIA GPUs as nvidia-smi names them; [] without it (TensorFlow is not imported here:
    the converter benchmark runs without it)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def git_state(repo: str = REPO) -> dict:
    """{"commit": HEAD's hash, "dirty": whether tracked or untracked (not ignored) files differ
    from it}; both None outside a git checkout."""
    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=30)
        status = subprocess.run(["git", "-C", repo, "status", "--porcelain"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if head.returncode != 0 or status.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def changed_flags() -> dict:
    """{name: value} of every flag not at its default (given on the command line, or set by
    --quick), absl's own (logging) left out; {} when no command line was parsed (a report
    built in a test)."""
    from absl import flags

    values = flags.FLAGS
    if not values.is_parsed():
        return {}
    return {name: values[name].value for name in sorted(values.flag_values_dict())
            if values[name].value != values[name].default
            and not values.find_module_defining_flag(name, "").startswith("absl.")}


class BenchmarkReport:
    def __init__(self, name: str, output_dir: str, config: dict | None = None,
                 charts: dict | None = None):
        """charts: {chart tag: {setting run: figure key}} (benchmarks/tensorboard_runs.py);
        default: the benchmark's own, benchmarks/charts.py."""
        self.name = name
        self.output_dir = output_dir
        self.config = dict(config or {})
        self.charts = tensorboard_runs.check_charts(
            benchmark_charts.CHARTS.get(name, {}) if charts is None else charts)
        self.results: dict[str, float] = {}
        self.details: dict[str, object] = {}

    def add(self, key: str, value: float, **details) -> None:
        self.results[key] = float(value)
        if details:
            self.details[key] = details

    def write(self) -> str:
        """Writes the JSON and the TensorBoard runs (the next step of
        output_dir/tensorboard/<name>/), prints the table; returns the JSON path."""
        os.makedirs(self.output_dir, exist_ok=True)
        tensorboard_dir = os.path.join(self.output_dir, "tensorboard", self.name)
        step = tensorboard_runs.claim_step(tensorboard_dir)
        record = {
            "benchmark": self.name,
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(),
            "config": self.config,
            "results": self.results,
            "details": self.details,
            "git": git_state(),
            "flags": changed_flags(),
            "tensorboard": {"dir": tensorboard_dir, "step": step},
        }
        path = os.path.join(self.output_dir, f"{self.name}.json")
        for target in (path, tensorboard_runs.step_file(tensorboard_dir, step)):
            with open(target + ".tmp", "w") as f:
                json.dump(record, f, indent=1)
            os.replace(target + ".tmp", target)
        runs = tensorboard_runs.write(tensorboard_dir, self.name, self.charts, self.results,
                                      step, record)
        self.print_table()
        print(f"wrote {path}; TensorBoard: {tensorboard_dir}, step {step}, runs {sorted(runs)}")
        return path

    def print_table(self) -> None:
        width = max((len(k) for k in self.results), default=10)
        print(f"\n{self.name} benchmark")
        for key, value in self.results.items():
            shown = f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
            print(f"  {key:<{width}}  {shown:>14}")
