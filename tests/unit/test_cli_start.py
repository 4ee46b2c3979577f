"""The Pulumi CLI this toolchain builds (toolchain/pulumi.sh) starts without work it does not need:
every `up`, `preview` and `destroy` pays for what its packages' init functions do."""

from __future__ import annotations

import os
import shutil
import subprocess


def init_bytes() -> dict[str, int]:
    """Bytes each Go package's init allocated in one `pulumi version` (the runtime's inittrace)."""
    pulumi = shutil.which("pulumi")
    assert pulumi, "pulumi is not on PATH: run toolchain/setup.sh (scripts/test does)"
    done = subprocess.run([pulumi, "version"], env={**os.environ, "GODEBUG": "inittrace=1"},
                          capture_output=True, text=True, check=True)
    found = {}
    for line in done.stderr.splitlines():
        if line.startswith("init "):  # init PACKAGE @T ms, C ms clock, B bytes, A allocs
            fields = line.split(", ")
            found[line.split()[1]] = int(fields[2].split()[0])
    return found


def test_the_password_word_lists_are_not_decoded_at_start():
    """patches/github.com/ccojocar/zxcvbn-go: unpatched, these two inits allocate ~18 MB (~45 ms)."""
    allocated = init_bytes()
    assert allocated["github.com/ccojocar/zxcvbn-go/frequency"] < 10_000
    assert allocated["github.com/ccojocar/zxcvbn-go/matching"] < 100_000
