"""The Pulumi CLI's failures an operator fixes by hand, said with the fix instead of Pulumi's dump.

A stack's secrets are encrypted with a passphrase every operator of the stack must share: a wrong
or missing one stops every command before it touches anything. A self-managed backend (a directory
or a bucket) holds a lock while a command changes the stack: a second command stops on it.
"""

from __future__ import annotations

import os
import re
from typing import Optional

from infra.core.errors import InputError
from infra.driver import locks

WRONG_PASSPHRASE = "incorrect passphrase"
NO_PASSPHRASE = "passphrase must be set with PULUMI_CONFIG_PASSPHRASE"
LOCKED = "the stack is currently locked by"
# One line per lock in Pulumi's message (pkg/backend/diy/lock.go).
_HOLDER = re.compile(r"created by (?P<user>[^@\s]+)@(?P<host>\S+) \(pid (?P<pid>\d+)\) at (?P<at>\S+)")
SHARING_DOC = "docs/shared-environments.md"


class PassphraseError(InputError):
    """The passphrase this machine has does not open the stack's secrets."""


class StackLocked(InputError):
    """Another command holds the stack's lock; nothing was changed."""


def passphrase_source(passphrase_file: str) -> str:
    """Where the passphrase of this command comes from, as an operator would look for it."""
    if os.environ.get("PULUMI_CONFIG_PASSPHRASE"):
        return "PULUMI_CONFIG_PASSPHRASE"
    return f"the file {passphrase_file}" + ("" if os.environ.get("PULUMI_CONFIG_PASSPHRASE_FILE")
                                           else " (this machine's default; created with a new passphrase on first use)")


def explain(text: str, stack: str, passphrase_file: str) -> Optional[InputError]:
    """The error to report for Pulumi's failure ``text`` on ``stack``, if it is one an operator fixes."""
    if WRONG_PASSPHRASE in text or NO_PASSPHRASE in text:
        source = passphrase_source(passphrase_file)
        what = "does not open" if WRONG_PASSPHRASE in text else "is not set, so it cannot open"
        return PassphraseError(
            f"the passphrase from {source} {what} the secrets of stack '{stack}' (Pulumi.{stack}.yaml: they "
            f"were encrypted with another one); nothing was changed. Fix: put the team's passphrase there (from "
            f"your team's secret store), or set PULUMI_CONFIG_PASSPHRASE_FILE to a file holding it ({SHARING_DOC})")
    if LOCKED in text:
        return locked(stack, [f"{m['user']}@{m['host']} (pid {m['pid']}) since {_when(m['at'])}"
                              for m in _HOLDER.finditer(text)])
    return None


def locked(stack: str, holders: list[str]) -> StackLocked:
    """The stack is locked by ``holders`` (each as :meth:`infra.driver.locks.Lock.describe` says it)."""
    return StackLocked(
        f"stack '{stack}' is locked by another command: {', '.join(holders) or 'holder unknown'}; nothing was "
        f"changed. Wait for it to end; if that command was killed, clear the lock with "
        f"`pulumi cancel --stack {stack} --yes` and run again")


def _when(stamp: str) -> str:
    try:
        return f"{locks.parse_time(stamp):%Y-%m-%d %H:%M:%S} UTC"
    except ValueError:
        return stamp
