"""Energy meters for the cost ledger: joules since an arbitrary origin, from the best counter the machine offers.

- "nvml": an NVIDIA GPU's own energy counter (nvmlDeviceGetTotalEnergyConsumption, Volta and later), when serving
  on CUDA and nvidia-ml-py is installed. It counts the GPU board only: the host CPU, memory and fans are not in it.
- "rapl": the CPU packages' RAPL counters under /sys/class/powercap (Intel, and AMD Zen since Linux 5.8). They count
  the whole package, whatever runs on it, and are often root-only or absent in VMs and containers.
- "estimate": this process's CPU time (its own and its reaped children's, user + system) times a power per busy
  core. No hardware is read: every figure made from it is marked estimated.

`EnergyMeter` is one class over a plain counter function (no subclass per source): it adds the lock and keeps the
reading monotonic, so a counter that glitches backwards never makes a negative charge.
"""

from __future__ import annotations

import logging
import os
import re
import resource
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("hearth")

# Watts one busy core draws, for the estimate. A server CPU's rated power (TDP, the whole package: cores, caches,
# memory controller) over its cores: Intel Xeon Gold 6448Y 225 W / 32 cores = 7.0 W; Xeon Platinum 8480+
# 350 W / 56 = 6.25 W; AMD EPYC 9654 360 W / 96 = 3.75 W; a desktop Ryzen 9 7950X 170 W / 16 = 10.6 W. 7 W sits in
# the middle. Memory, fans and power-supply losses are left out, so it is a floor for the power at the wall.
DEFAULT_WATTS_PER_CORE = 7.0

_PACKAGE_ZONE = re.compile(r"intel-rapl:\d+")  # packages only: intel-rapl:0:0 (core, uncore, dram) are inside them


class EnergyMeter:
    """Joules since an arbitrary origin from `counter` (any float counter of joules that can only grow), read under
    a lock and never decreasing. `source` says where the joules come from; `estimated` is True only for
    "estimate", the one source that reads no hardware."""

    def __init__(self, source: str, counter: Callable[[], float]):
        self.source = source
        self.estimated = source == "estimate"
        self._counter = counter
        self._lock = threading.Lock()
        self._last = 0.0

    def read(self) -> float:
        with self._lock:
            self._last = max(self._last, float(self._counter()))
            return self._last

    def __repr__(self) -> str:
        return f"EnergyMeter({self.source!r})"


class RaplCounter:
    """The sum of the package zones' `energy_uj` counters, in joules since the first reading. Each counter wraps at
    its `max_energy_range_uj`; a reading below the one before is a wrap. A counter can wrap only once between two
    readings without the loss showing: at 200 W the usual 262,143 J range wraps every ~22 minutes, longer than a
    request takes, and the ledger charges only spans that begin and end with a reading."""

    def __init__(self, zones: list[Path]):
        self.zones = zones
        self.ranges = [_read_int(z / "max_energy_range_uj") for z in zones]
        self.last = [_read_int(z / "energy_uj") for z in zones]
        self.total_uj = 0

    def __call__(self) -> float:
        for i, zone in enumerate(self.zones):
            try:
                now = _read_int(zone / "energy_uj")
            except (OSError, ValueError):
                continue  # a zone that stops answering adds nothing until it answers again
            delta = now - self.last[i]
            if delta < 0:
                delta += self.ranges[i]
            self.total_uj += max(0, delta)
            self.last[i] = now
        return self.total_uj / 1e6


def rapl_zones(rapl_root: Path) -> list[Path]:
    """The package zones under `rapl_root` whose counter and range this process can read (sorted)."""
    try:
        candidates = sorted(p for p in Path(rapl_root).iterdir() if _PACKAGE_ZONE.fullmatch(p.name))
    except OSError:
        return []
    zones = []
    for zone in candidates:
        try:
            _read_int(zone / "energy_uj")
            if _read_int(zone / "max_energy_range_uj") > 0:
                zones.append(zone)
        except (OSError, ValueError):
            continue
    return zones


def _read_int(path: Path) -> int:
    with open(path, "rb") as f:
        return int(f.read(64).strip())


class NvmlCounter:
    """A GPU's total energy counter (millijoules since the driver loaded) in joules since the first reading."""

    def __init__(self, nvml, handle):
        self.nvml = nvml
        self.handle = handle
        self.origin = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)

    def __call__(self) -> float:
        return (self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) - self.origin) / 1000.0


def nvml_counter(device: str) -> NvmlCounter:
    """The NVML counter of the GPU that torch calls `device` ("cuda", "cuda:1"). Raises ImportError when
    nvidia-ml-py is absent and any other exception when NVML or the counter is not there."""
    import pynvml  # nvidia-ml-py: optional, imported only when serving on a GPU

    index = int(device.partition(":")[2] or 0)
    pynvml.nvmlInit()
    # torch numbers the GPUs CUDA_VISIBLE_DEVICES shows; NVML numbers them all. Read where it is used: the
    # variable is the CUDA runtime's own switch, not one of hearth's.
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if visible and index < len(visible):
        entry = visible[index]
        if entry.isdigit():
            handle = pynvml.nvmlDeviceGetHandleByIndex(int(entry))
        else:  # GPU-<uuid> or MIG-<uuid>
            handle = pynvml.nvmlDeviceGetHandleByUUID(entry)
    else:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    return NvmlCounter(pynvml, handle)


def cpu_time_joules(watts_per_core: float) -> Callable[[], float]:
    """The estimate: CPU seconds of this process and its reaped children (user + system) times `watts_per_core`."""

    def counter() -> float:
        seconds = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            r = resource.getrusage(who)
            seconds += r.ru_utime + r.ru_stime
        return seconds * watts_per_core

    return counter


def detect_meter(device: str = "cpu", watts_per_core: float = DEFAULT_WATTS_PER_CORE,
                 rapl_root: Path = Path("/sys/class/powercap")) -> EnergyMeter:
    """The best meter for serving on `device`: NVML on a CUDA device, else RAPL where readable, else the estimate
    from CPU time at `watts_per_core` (which must be positive and finite). Never raises for a missing counter: each
    one that cannot be read falls through to the next, with the reason logged at debug level."""
    if not 0 < watts_per_core < 10_000:
        raise ValueError(f"watts_per_core must be a positive number of watts, not {watts_per_core!r}")
    if device.startswith("cuda"):
        try:
            return EnergyMeter("nvml", nvml_counter(device))
        except ImportError:
            log.debug("energy: nvidia-ml-py is not installed; no GPU energy counter")
        except Exception as e:  # NVMLError_* (no driver, no GPU, counter not supported) and a bad index
            log.debug("energy: no NVML energy counter for %s (%s)", device, e)
    zones = rapl_zones(rapl_root)
    if zones:
        try:
            return EnergyMeter("rapl", RaplCounter(zones))
        except (OSError, ValueError) as e:
            log.debug("energy: RAPL counters went away (%s)", e)
    return EnergyMeter("estimate", cpu_time_joules(watts_per_core))
