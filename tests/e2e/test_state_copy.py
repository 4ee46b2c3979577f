"""The state copy on a real Docker Engine (infra.core.statecopy): written and read without starting a
container, the newest of two slots read back, a slot cut short skipped, a volume of another state
never written."""

from __future__ import annotations

import json
import secrets

import pytest

from infra.core import dockercli, statecopy
from infra.core.statecopy import StateCopy
from tests.e2e.support import objects_of, sweep

pytestmark = pytest.mark.e2e
PROJECT = "sin-datastores"


@pytest.fixture
def stack():
    name = f"e2e-copy-{secrets.token_hex(4)}"
    try:
        yield name
    finally:
        sweep(name)


def copy_of(stack: str, serial: int, state_id: str = "a1", resources: int = 1) -> StateCopy:
    return StateCopy(PROJECT, stack, state_id, serial, "2026-12-06 10:00:00 UTC", "ana@laptop",
                     {"resources": [{"urn": f"urn:{n}", "type": "t"} for n in range(resources)]})


def labels(stack: str) -> dict[str, str]:
    return {f"{PROJECT}.project": PROJECT, f"{PROJECT}.stack": stack, f"{PROJECT}.role": statecopy.ROLE}


def slots(stack: str) -> dict[str, int]:
    """The serial of the copy in each slot of the volume."""
    found = {}
    with statecopy._mounted(PROJECT, stack) as helper:
        for slot in statecopy.SLOTS:
            text = dockercli.docker("cp", f"{helper}:{statecopy.MOUNT}/{slot}", "-")
            found[slot] = json.loads(text[text.index("{"):text.rindex("}") + 1])["serial"]
    return found


def test_copies_are_written_in_turn_and_the_newest_whole_one_is_read(stack):
    assert statecopy.read(PROJECT, stack) is None
    for serial in range(3):
        statecopy.write(copy_of(stack, serial, resources=serial + 1), labels(stack))
        assert statecopy.read(PROJECT, stack) == copy_of(stack, serial, resources=serial + 1)
    volume = statecopy.find(PROJECT, stack)
    assert statecopy.owner(volume) == "a1" and volume["Labels"][dockercli.STACK_LABEL] == stack
    assert objects_of(stack) == {"containers": [], "networks": [], "volumes": [statecopy.volume_name(PROJECT, stack)]}, \
        "nothing but the volume is left: the container that wrote it is gone"

    assert slots(stack) == {statecopy.SLOTS[0]: 2, statecopy.SLOTS[1]: 1}, "each write replaces the older copy"

    # A write cut short (serial 3 lands in slot 1, which holds serial 1 and now half a file): serial 2 is read.
    with statecopy._mounted(PROJECT, stack) as helper:
        dockercli.put_files(helper, {f"{statecopy.MOUNT}/{statecopy.SLOTS[1]}": (copy_of(stack, 3).to_bytes()[:40], 0o600)})
    assert statecopy.read(PROJECT, stack) == copy_of(stack, 2, resources=3)


def test_a_volume_of_another_state_is_never_written(stack):
    statecopy.write(copy_of(stack, 0, state_id="a1"), labels(stack))
    with pytest.raises(statecopy.StateCopyError, match=r"holds the state copy of another state \(a1\), not of this one \(b2\)"):
        statecopy.write(copy_of(stack, 1, state_id="b2"), labels(stack))
    assert statecopy.read(PROJECT, stack) == copy_of(stack, 0, state_id="a1")
    statecopy.remove(PROJECT, stack)
    assert statecopy.find(PROJECT, stack) is None and statecopy.read(PROJECT, stack) is None


def test_a_helper_a_killed_command_left_is_replaced_and_removed_with_the_copy(stack):
    statecopy.write(copy_of(stack, 0), labels(stack))
    left = f"{statecopy.volume_name(PROJECT, stack)}-io"  # killed between its create and its removal
    dockercli.docker("create", "--name", left, "--volume", f"{statecopy.volume_name(PROJECT, stack)}:/state",
                     "--label", f"{dockercli.STACK_LABEL}={stack}", statecopy.EMPTY_IMAGE, "none")
    statecopy.write(copy_of(stack, 1), labels(stack))
    assert statecopy.read(PROJECT, stack) == copy_of(stack, 1)
    dockercli.docker("create", "--name", left, "--volume", f"{statecopy.volume_name(PROJECT, stack)}:/state",
                     "--label", f"{dockercli.STACK_LABEL}={stack}", statecopy.EMPTY_IMAGE, "none")
    statecopy.remove(PROJECT, stack)
    assert objects_of(stack) == {"containers": [], "networks": [], "volumes": []}
