"""The machine a figure was measured on: every benchmark prints it beside its figures.

The 2-core development VMs come in kinds (Intel Xeon, AMD EPYC) whose speeds differ by more than
the changes being measured, so a figure without its CPU model cannot be compared with another.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> str:
    """CPU model, core count, OS and Python: one line for a report."""
    return (f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def load_average() -> float:
    """The 1-minute load average (other work on the machine skews every timing)."""
    return os.getloadavg()[0]
