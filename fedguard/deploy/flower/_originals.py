"""What each workaround replaced, so that the registry can put it back.

Every patch changes Flower only through :func:`replace_attr` or :func:`replace_item`,
naming itself. The value it replaced is kept the first time (applying a patch again keeps
the stock value); :func:`restore_all` puts everything back newest first, so that two
patches wrapping the same function (the polling and the bundle check both wrap the
SuperNode's ``_pull_and_store_message``) unwind in order. A target that something else has
changed since the patch (a stand-in module that loaded the real one) is left as it is.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from fedguard.errors import FedguardError

__all__ = ["changed", "replace_attr", "replace_item", "restore", "restore_all"]

_ABSENT = object()  # the target had no such attribute or key before the patch


@dataclass
class _Change:
    patch: str
    owner: Any
    key: str
    item: bool  # owner[key] rather than owner.key
    original: Any
    current: Any  # what the patch set last


_CHANGES: list[_Change] = []  # oldest first


def _get(owner: Any, key: str, *, item: bool) -> Any:
    return owner.get(key, _ABSENT) if item else getattr(owner, key, _ABSENT)


def _record(patch: str, owner: Any, key: str, value: Any, *, item: bool) -> None:
    for change in _CHANGES:
        if change.patch == patch and change.owner is owner and change.key == key:
            change.current = value
            return
    _CHANGES.append(_Change(patch, owner, key, item, _get(owner, key, item=item), value))


def replace_attr(patch: str, owner: Any, name: str, value: Any) -> None:
    """``setattr(owner, name, value)``, remembering what it replaced for :func:`restore`."""
    _record(patch, owner, name, value, item=False)
    setattr(owner, name, value)


def replace_item(patch: str, mapping: MutableMapping[str, Any], key: str, value: Any) -> None:
    """``mapping[key] = value``, remembering what it replaced for :func:`restore`."""
    _record(patch, mapping, key, value, item=True)
    mapping[key] = value


def changed(patch: str) -> bool:
    """Whether ``patch`` has replaced anything not restored since."""
    return any(change.patch == patch for change in _CHANGES)


def _undo(change: _Change) -> None:
    if _get(change.owner, change.key, item=change.item) is not change.current:
        return  # changed since by someone else: theirs now
    if change.item:
        if change.original is _ABSENT:
            del change.owner[change.key]
        else:
            change.owner[change.key] = change.original
    elif change.original is _ABSENT:
        delattr(change.owner, change.key)
    else:
        setattr(change.owner, change.key, change.original)


def _after(change: _Change, other: _Change) -> bool:
    return _CHANGES.index(change) > _CHANGES.index(other)


def restore(patch: str) -> None:
    """Put back what ``patch`` replaced, newest first; a no-op if it replaced nothing.

    Raises
    ------
    FedguardError
        Another patch has replaced one of the same targets since (it wraps this one's):
        nothing is changed; restore that one first, or everything with :func:`restore_all`.
    """
    mine = [c for c in _CHANGES if c.patch == patch]
    later = {
        c.patch
        for c in _CHANGES
        if c.patch != patch
        and any(c.owner is m.owner and c.key == m.key and _after(c, m) for m in mine)
    }
    if later:
        raise FedguardError(
            f"restore {patch}: expected its targets as it left them, got them replaced since "
            f"by {', '.join(sorted(later))}; restore that first, or use restore_all"
        )
    for change in reversed(mine):
        _undo(change)
        _CHANGES.remove(change)


def restore_all() -> list[str]:
    """Put back everything every patch replaced, newest first; the patches, in that order."""
    undone: list[str] = []
    while _CHANGES:
        change = _CHANGES.pop()
        _undo(change)
        if change.patch not in undone:
            undone.append(change.patch)
    return undone
