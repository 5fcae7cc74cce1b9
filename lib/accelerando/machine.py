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


# CPU features that decide which fast paths exist (AVX2 vs AVX-512 kernels, VNNI int8 dot
# products, AMX bf16/int8 tiles): absolute times are only comparable between machines sharing them.
CPU_FEATURES = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI",
                "avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16", "amx_int8": "AMX-INT8"}


@functools.cache
def cpu_flags() -> list[str]:
    """Which of CPU_FEATURES this CPU has (names as in CPU_FEATURES' values), from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [label for flag, label in CPU_FEATURES.items() if flag in have]
    except OSError:
        pass
    return []


def hardware() -> dict:
    """CPU model and features, logical cores, memory, torch threads and any CUDA devices."""
    info = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
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


def _git(root: Path, *args: str) -> str | None:
    """Output of a git command in `root`, None when git is missing or fails (not a repository)."""
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


# Paths a book run itself writes (executed notebooks, run records, audio). Re-executing the book
# rewrites them chapter by chapter, so they are not uncommitted code for the chapters that follow.
BOOK_RUN_OUTPUTS = ("book/chapters/", "book/records/", "book/audio/")


def git_commit(root: Path = REPO_ROOT, ignore: tuple[str, ...] = BOOK_RUN_OUTPUTS) -> dict:
    """The commit the code ran from, and whether the work tree had uncommitted changes (untracked
    files included) outside the `ignore` prefixes, which are listed in the result."""
    commit = _git(root, "rev-parse", "HEAD")
    dirty = dirty_files(root, ignore)
    return {"commit": commit.strip() if commit else None, "dirty": bool(dirty) if dirty is not None else None,
            "ignored": list(ignore)}


def git_ignored(paths: list[str], root: Path = REPO_ROOT) -> set[str]:
    """Those of `paths` (relative to `root`) that .gitignore excludes: empty outside a repository."""
    try:
        out = subprocess.run(["git", "check-ignore", "--stdin"], input="\n".join(paths), cwd=root,
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return set(out.stdout.splitlines()) if out.returncode in (0, 1) else set()  # 1: none ignored


def git_diff(root: Path = REPO_ROOT, ignore: tuple[str, ...] = BOOK_RUN_OUTPUTS) -> str | None:
    """`git diff HEAD`: every uncommitted change to tracked files outside the `ignore` prefixes
    (None outside a repository)."""
    return _git(root, "diff", "HEAD", "--", ".", *(f":(exclude){prefix}" for prefix in ignore))


def dirty_files(root: Path = REPO_ROOT, ignore: tuple[str, ...] = ()) -> list[str] | None:
    """Paths with uncommitted changes, untracked files included (git-ignored ones are not), except
    those under the `ignore` prefixes; None outside a repository."""
    status = _git(root, "status", "--porcelain", "--untracked-files=all")
    if status is None:
        return None
    paths = [line[3:].split(" -> ")[-1].strip('"') for line in status.splitlines() if line.strip()]
    return [p for p in paths if not p.startswith(ignore)]
