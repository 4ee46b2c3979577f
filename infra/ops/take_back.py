"""Take a running environment back into a state that was lost: from the state copy on its Docker host.

`up` and `down` leave a copy of the stack's state beside the environment (:mod:`infra.core.statecopy`).
When the state itself is gone (a lost home directory, a deleted bucket), this puts that copy into the
stack's state, now empty, after checking it against the host: every container of the copy that is
there has its id, the stack's labels, network, address and volume (a copy older than what runs is
refused); what is missing or stopped is drift, said and left to the next `up`. Nothing on the host is
touched, no container restarts. The state then gets a new id, under which the copy is written anew:
the environment and its volumes are this state's, and no longer the lost one's, should it turn up. A
state that holds resources is never overwritten.
"""

from __future__ import annotations

from typing import Callable

from pulumi import automation as auto

from infra.core import dockerhost, statecopy
from infra.core.config import PROJECT
from infra.core.errors import InputError
from infra.driver import drift, stacks

def _count(items: tuple, noun: str) -> str:
    return f"{len(items)} {noun}{'s' if len(items) != 1 else ''}"


class TakeBackRefused(InputError):
    """The environment cannot be taken back as asked; nothing was changed."""


def take_back(stack: auto.Stack, say: Callable[[str], None]) -> statecopy.StateCopy:
    held = stacks.managed_resources(stacks.exported_deployment(stack))
    if held:
        raise TakeBackRefused(f"the state of stack '{stack.name}' holds {len(held)} resources: it is not lost, and "
                              f"take-back never overwrites a state; nothing was changed. If this state is the "
                              f"wrong one, point PULUMI_BACKEND_URL at the environment's (docs/shared-environments.md)")
    host = stacks.docker_host_of(stack)
    with dockerhost.session(host) as session, dockerhost.using(session):
        copy = statecopy.read(PROJECT, stack.name)
        if copy is None:
            raise TakeBackRefused(f"{host.describe()} holds no state copy of stack '{stack.name}' (volume "
                                  f"{statecopy.volume_name(PROJECT, stack.name)}; `python -m infra up` and `down` "
                                  f"write it): nothing to take back; nothing was changed")
        declared = drift.declared(copy.deployment)
        findings = drift.find(declared)
        differing = [f for f in findings if f.kind in ("foreign", "changed")]
        if differing:
            raise TakeBackRefused(f"the state copy on {host.describe()} ({copy.describe()}) does not match what runs "
                                  f"there; nothing was changed:\n"
                                  + "\n".join(f"  - {f.line()}" for f in differing))
        stacks.import_deployment(stack, copy.deployment, "taking the environment back into")
        # A new id, and the copy written anew under it: should the lost state turn up again, it no longer
        # owns the environment (its `up` is refused), so two states never change one environment.
        stacks.new_state_id(stack)
        statecopy.remove(PROJECT, stack.name)
        stacks.keep_state_copy(stack, say)
    taken = (f"{_count(declared.containers, 'container')}, {_count(declared.volumes, 'volume')}, "
             f"{_count(declared.networks, 'network')}" if declared.containers or declared.volumes else
             "the environment is down; the volumes it kept are this state's now, and `up` comes back onto them")
    say(f"took the environment of stack '{stack.name}' on {host.describe()} back into this state from its copy "
        f"there ({copy.describe()}): {taken}; nothing on the host was touched. The lost state, should it turn up, "
        f"no longer owns the environment: remove it")
    for finding in findings:
        say(f"drift: {finding.line()}")
    return copy
