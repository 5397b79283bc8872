"""Who owns a device, and who may see it.

A configured device's owner is in vigil.yaml (``devices[].owner``), one added through the
API has the owner given then; both default to the admin. An admin sees every device; a
user sees their own and the symbols' pseudo-devices (``quote.<SYMBOL>``, shared by every
follower). For a user, a device they may not see and one that does not exist are the same
404, so device ids cannot be probed.
"""

from __future__ import annotations

from api.auth import caller
from api.db import get_store
from api.problems import Problem
from api.resources import resources
from vigil.symbols import is_quote_device


def device_owner(device: str) -> str | None:
    """The owner of a configured or added device; None for any other."""
    for entry in resources().config.devices:
        if entry.id == device:
            return entry.owner
    row = get_store().device(device)
    return row.owner if row is not None and row.added else None


def owned_devices(user: str) -> set[str]:
    """Every configured or added device of ``user``."""
    mine = {d.id for d in resources().config.devices if d.owner == user}
    return mine | {row.id for row in get_store().devices() if row.added and row.owner == user}


def may_see(device: str) -> bool:
    who = caller()
    return who.is_admin or is_quote_device(device) or device_owner(device) == who.user


def visible_device(device: str) -> None:
    """404 unless the caller may see ``device``."""
    if not may_see(device):
        raise Problem(404, f"no device {device!r}")
