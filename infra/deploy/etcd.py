"""etcd's member list, read and changed through the JSON gateway every etcd 3.5 member serves on its
client port (``POST /v3/cluster/member/{list,remove,add}``: what ``etcdctl member ...`` calls), so
that neither the program nor the membership resource needs a shell on a host. Plain Python, no Pulumi.

The program reads who is in etcd before a run (:func:`listed`); when an etcd host leaves the list,
the first host's membership resource moves its member to the host that takes its place
(:func:`move`): the one that left is removed, then the new one added, so the majority etcd needs
stays two throughout (added first, it would be three of four while one is down). The new member's
container then starts with ``--initial-cluster-state existing`` and catches up from the others.
``forget-host`` removes the member of a host gone for good (:func:`forget`).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Optional, Sequence
from urllib.parse import urlsplit

from infra.core.cluster import ETCD_CLIENT_PORT, ETCD_PEER_PORT, Member
from infra.deploy.replicated import POLL_S, REST_TIMEOUT_S, ClusterNotReady


@dataclass(frozen=True)
class EtcdMember:
    """One member as etcd lists it."""

    id: str
    """Its member ID (a uint64, which the gateway's JSON writes as a decimal string)."""
    address: str
    """The host of its peer URL."""


def _call(address: str, verb: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"http://{address}:{ETCD_CLIENT_PORT}/v3/cluster/member/{verb}", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=REST_TIMEOUT_S) as reply:
        return json.load(reply)


def _members(reply: dict) -> tuple[EtcdMember, ...]:
    return tuple(EtcdMember(str(m["ID"]), urlsplit(m["peerURLs"][0]).hostname) for m in reply["members"])


def listed(addresses: Sequence[str]) -> tuple[Optional[str], tuple[EtcdMember, ...]]:
    """The members as the first of ``addresses`` whose etcd answers lists them, and that address;
    ``(None, ())`` when none answers (no etcd cluster yet, or none of them runs a member)."""
    for address in addresses:
        try:
            return address, _members(_call(address, "list", {}))
        except (OSError, ValueError):  # refused, timed out, an HTTP error, not etcd's JSON
            continue
    return None, ()


def move(wanted: Sequence[str], deadline_s: float) -> list[str]:
    """Make etcd's members the hosts ``wanted``: remove the members on other hosts, then add those
    missing, through a member on a wanted host that answers. Each step is retried until
    ``deadline_s`` (an election follows when the removed member led). Run again after a failure, it
    goes on where it stopped. What it changed, one line each."""
    give_up = time.monotonic() + deadline_s
    done = []
    while True:
        via, members = listed(wanted)
        try:
            if via is None:
                raise ClusterNotReady(f"no etcd member on {', '.join(wanted)} answers")
            gone = [m for m in members if m.address not in wanted]
            present = {m.address for m in members}
            if gone:
                _call(via, "remove", {"ID": gone[0].id})
                done.append(f"etcd: the member on {gone[0].address} removed")
                continue
            missing = [address for address in wanted if address not in present]
            if not missing:
                return done
            _call(via, "add", {"peerURLs": [Member(missing[0]).url(ETCD_PEER_PORT)]})
            done.append(f"etcd: a member on {missing[0]} added (its container starts it)")
        except (OSError, ValueError, ClusterNotReady) as exc:
            if time.monotonic() >= give_up:
                raise ClusterNotReady(f"etcd's members were not moved to {', '.join(wanted)} within "
                                      f"{deadline_s:.0f} s: {_reason(exc)}; run `up` again") from None
            time.sleep(POLL_S)


def forget(address: str, asking: Sequence[str], deadline_s: float) -> list[str]:
    """Remove the member on ``address`` (a host gone for good) from etcd, asking the members on
    ``asking``; nothing when etcd does not list it. What it changed."""
    _, members = listed(asking)
    if all(m.address != address for m in members):
        return []
    return move([m.address for m in members if m.address != address], deadline_s)


def _reason(exc: Exception) -> str:
    """etcd's own words for a refused request (its JSON error body), else the exception's."""
    if isinstance(exc, urllib.error.HTTPError):
        try:
            return f"etcd said: {json.load(exc).get('message') or exc}"
        except (OSError, ValueError):
            pass
    return str(exc)
