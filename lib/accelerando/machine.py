"""What we run on: device choice, thread count and provenance for run records.

Every measured figure in the book is only meaningful next to the machine, thread count and
package versions that produced it, so these are gathered once here and written into each record.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import torch

# Packages whose versions change what a chapter measures; recorded in every run record.
TRACKED_PACKAGES = (
    "torch", "diffusers", "transformers", "triton", "numpy", "accelerando",
    "jupyter-book", "papermill", "wandb",
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def default_device() -> torch.device:
    """CUDA when present (GPU paths are chosen automatically), otherwise CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels so a timer measures the work, not its launch."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def set_threads(threads: int | None) -> int:
    """Fix torch's intra-op thread count (None keeps the current one); returns the count in force.

    Benchmarks fix it and record it: on a shared 2-core machine two threads stall whenever another
    process holds a core, so one thread gives the steadier ratios.
    """
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str | None]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@functools.cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict:
    """CPU model, logical cores, memory, torch threads and any CUDA devices."""
    info = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "memory_bytes": _total_memory_bytes(),
        "cuda": torch.cuda.is_available(),
        "gpus": [],
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def _total_memory_bytes() -> int | None:
    try:
        import psutil

        return psutil.virtual_memory().total
    except ImportError:
        return None


def git_commit(root: Path = REPO_ROOT) -> dict:
    """The commit the code ran from, and whether the work tree had uncommitted changes."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}
