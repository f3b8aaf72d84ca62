"""`return_freed_memory`: freed tensors leave the RSS at once instead of staying in glibc's heap."""

import platform
import subprocess
import sys

import pytest

SCRIPT = """
import sys
import torch
from orpo_pipeline.train.memory import return_freed_memory

def rss_mib():
    status = open("/proc/self/status").read().split("VmRSS:")[1]
    return int(status.split()[0]) // 1024

if sys.argv[1] == "on":
    assert return_freed_memory()
big = torch.ones(4 << 20)
del big  # a freed 16 MiB block: glibc raises its mmap threshold past 1 MiB
blocks = [torch.ones(1 << 18) for _ in range(200)]  # 200 x 1 MiB, the last one on top
before = rss_mib()
del blocks[:-1]
print(before - rss_mib())
"""


def freed_mib(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_freed_tensors_leave_the_rss_only_when_asked():
    assert freed_mib("off") < 20  # held in the heap under the last block
    assert freed_mib("on") > 180  # 199 MiB handed back
