"""One measurement writer for every benchmark: a JSON file, TensorBoard scalars, a printed table.

    report = BenchmarkReport("convert", output_dir, config={...})
    report.add("engine_patches_per_s", 12345.0)
    report.write()   # output_dir/convert.json and output_dir/tensorboard/convert/

Rates are medians over repetitions with warm-up excluded; ratios are taken between figures
measured side by side in the same run, because this machine is shared and noisy.
"""

import datetime
import json
import os
import platform
import statistics
import time


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
            "python": platform.python_version()}


class BenchmarkReport:
    def __init__(self, name: str, output_dir: str, config: dict | None = None):
        self.name = name
        self.output_dir = output_dir
        self.config = dict(config or {})
        self.results: dict[str, float] = {}
        self.details: dict[str, object] = {}

    def add(self, key: str, value: float, **details) -> None:
        self.results[key] = float(value)
        if details:
            self.details[key] = details

    def write(self) -> str:
        """Writes JSON and TensorBoard scalars, prints the table; returns the JSON path."""
        os.makedirs(self.output_dir, exist_ok=True)
        record = {
            "benchmark": self.name,
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(),
            "config": self.config,
            "results": self.results,
            "details": self.details,
        }
        path = os.path.join(self.output_dir, f"{self.name}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(record, f, indent=1)
        os.replace(path + ".tmp", path)
        self._write_tensorboard()
        self.print_table()
        print(f"wrote {path}")
        return path

    def _write_tensorboard(self) -> None:
        import tensorflow as tf  # imported late: the converter benchmark needs TF only here

        writer = tf.summary.create_file_writer(
            os.path.join(self.output_dir, "tensorboard", self.name))
        with writer.as_default():
            for key, value in self.results.items():
                tf.summary.scalar(f"{self.name}/{key}", value, step=0)
            tf.summary.text(f"{self.name}/config", json.dumps(self.config, indent=1), step=0)
        writer.close()

    def print_table(self) -> None:
        width = max((len(k) for k in self.results), default=10)
        print(f"\n{self.name} benchmark")
        for key, value in self.results.items():
            shown = f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
            print(f"  {key:<{width}}  {shown:>14}")
