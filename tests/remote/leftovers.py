"""What a remote host or a LAN of the harness left on this machine (the teardown tests' check)."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path

from tests.remote_host import CGROUP_ROOT, PrivateLan, RemoteDockerHost


def leftovers(host: RemoteDockerHost) -> list[str]:
    """What of ``host`` still exists on this machine: namespace, veth, processes, mounts, directories, cgroups."""
    found = []
    if host.name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout:
        found.append(f"namespace {host.name}")
    if Path(f"/sys/class/net/{host.host_veth}").exists():
        found.append(f"veth {host.host_veth}")
    found += [f"process {p.parent.name}: {_read(p)}" for p in Path("/proc").glob("[0-9]*/cmdline")
              if host.name in _read(p)]
    found += [f"mount {line}" for line in Path("/proc/self/mountinfo").read_text().splitlines() if host.name in line]
    found += [f"directory {d}" for d in (host.base, host.data_root) if d.exists()]
    found += [f"cgroup {d}" for d in CGROUP_ROOT.glob(f"*/{host.name}")]
    return found


def lan_leftovers(lan: PrivateLan) -> list[str]:
    """What of ``lan`` still exists here: its namespace, this machine's port, any address or route in its /24,
    processes, mounts, its directory."""
    found = []
    if lan.name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout:
        found.append(f"namespace {lan.name}")
    found += [f"interface {i.name}" for i in Path("/sys/class/net").iterdir() if lan.run_id in i.name]
    if lan.network is not None:
        addresses = [f"{i['local']}/{i['prefixlen']}" for entry in _ip_json("addr") for i in entry["addr_info"]]
        routes = [r["dst"] for r in _ip_json("route") if r.get("dst", "default") != "default"]
        found += [f"address or route {n}" for n in addresses + routes
                  if ipaddress.ip_network(n, strict=False).overlaps(lan.network)]
    found += [f"process {p.parent.name}: {_read(p)}" for p in Path("/proc").glob("[0-9]*/cmdline")
              if lan.name in _read(p)]
    found += [f"mount {line}" for line in Path("/proc/self/mountinfo").read_text().splitlines() if lan.name in line]
    found += [f"directory {lan.base}"] if lan.base.exists() else []
    return found


def _read(path: Path) -> str:
    try:
        return path.read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # the process exited meanwhile
        return ""


def _ip_json(kind: str) -> list[dict]:
    return json.loads(subprocess.run(["ip", "-4", "-j", kind], capture_output=True, text=True, check=True).stdout)
