"""What the hardware can do: measured copy bandwidth, the yardstick for "bandwidth achieved"."""
import platform
import time
from pathlib import Path

import torch

from ttsplan.errors import TTSPlanError


def check_device(device: str) -> torch.device:
    """The device a command runs on, refused in one line when unknown or absent."""
    if device not in ("cpu", "cuda"):
        raise TTSPlanError(f"unknown device {device!r}: cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise TTSPlanError("--device cuda: no GPU is visible to torch here")
    return torch.device(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Bytes/s moved (read + written) by a large device-to-device copy, median of a few repeats."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / sorted(times)[len(times) // 2]


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name with the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or "cpu"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {torch.get_num_threads()} threads"


def device_slug(device: torch.device) -> str:
    """A short file-name form of the device: 'h100', or 'cpu-2t' (for 2 threads)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device).lower()
        for short in ("h200", "h100", "a100", "l40s", "l4", "a10g"):
            if short in name:
                return short
        return "-".join(name.split())
    return f"cpu-{torch.get_num_threads()}t"
