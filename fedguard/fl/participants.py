"""Who takes part in a run: one record per node, and the lookups a round needs.

A deployed run knows each node under four names: the name its key was enrolled under
(what every console line, metric and SecAgg+ roster says), the Flower node id (where a
message goes and where a reply came from), the client id (its index in the run: what
:func:`fedguard.fl.loop.run_rounds` draws cohorts from) and, within one secure round,
its slot (1..n, the SecAgg+ party number). :class:`Participant` holds the first three
and what the node described of itself; :class:`Participants` and :class:`Cohort` answer
every lookup between them, so no round keeps maps of its own that could disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from fedguard.errors import invalid

__all__ = ["Cohort", "Participant", "Participants"]


@dataclass(frozen=True, kw_only=True)
class Participant:
    """One node of a run.

    Attributes
    ----------
    name : str
        The name its key was enrolled under; never what the node calls itself.
    node_id : int
        Its Flower node id: where messages go, and whose replies are whose.
    client_id : int
        Its index in the run (0..N-1), the id cohorts are drawn from.
    description : Mapping[str, object]
        What it answered to ``query.describe`` (read-only; empty when not asked).
    """

    name: str
    node_id: int
    client_id: int
    description: Mapping[str, object] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        # Read-only: a record shared by every lookup must not change under one of them.
        object.__setattr__(self, "description", MappingProxyType(dict(self.description)))


class Participants:
    """The participants of a run, indexed by client id.

    Parameters
    ----------
    members : Iterable[Participant]
        Client ids ``0..N-1``, each once; names and node ids distinct.

    Raises
    ------
    ConfigError
        Client ids not ``0..N-1``, or a name or node id given twice.
    """

    def __init__(self, members: Iterable[Participant]) -> None:
        ordered = tuple(sorted(members, key=lambda p: p.client_id))
        ids = [p.client_id for p in ordered]
        if ids != list(range(len(ordered))):
            raise invalid("participants", allowed="client ids 0..N-1, each once", got=ids)
        for what, values in (
            ("names", [p.name for p in ordered]),
            ("node ids", [p.node_id for p in ordered]),
        ):
            if len(set(values)) != len(values):
                raise invalid("participants", allowed=f"distinct {what}", got=values)
        self._members = ordered
        self._by_node = {p.node_id: p for p in ordered}

    @classmethod
    def enrolled(cls, nodes: Sequence[tuple[str, int, Mapping[str, object]]]) -> Participants:
        """Number ``(name, node id, description)`` triples as client ids 0, 1, ..."""
        return cls(
            Participant(name=name, node_id=node, client_id=i, description=desc)
            for i, (name, node, desc) in enumerate(nodes)
        )

    def __getitem__(self, client_id: int) -> Participant:
        return self._members[client_id]

    def __iter__(self) -> Iterator[Participant]:
        return iter(self._members)

    def __len__(self) -> int:
        return len(self._members)

    @property
    def names(self) -> list[str]:
        """Enrolled names in client-id order."""
        return [p.name for p in self._members]

    def by_node(self, node_id: int) -> Participant | None:
        """The participant behind a Flower node id; None for a node not in the run."""
        return self._by_node.get(node_id)

    def cohort(self, client_ids: Iterable[int]) -> Cohort:
        """The round's cohort: these client ids, given slots 1..n in this order."""
        return Cohort(members=tuple(self._members[c] for c in client_ids))


@dataclass(frozen=True)
class Cohort:
    """The participants asked in one round; slot ``i`` (1..n) is ``members[i - 1]``."""

    members: tuple[Participant, ...]
    _by_node: Mapping[int, Participant] = field(init=False, repr=False, compare=False)
    _slot_of: Mapping[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_node = {p.node_id: p for p in self.members}
        if len(by_node) != len(self.members):
            raise invalid(
                "cohort", allowed="distinct participants", got=[p.name for p in self.members]
            )
        object.__setattr__(self, "_by_node", MappingProxyType(by_node))
        slots = {p.client_id: i + 1 for i, p in enumerate(self.members)}
        object.__setattr__(self, "_slot_of", MappingProxyType(slots))

    def __iter__(self) -> Iterator[Participant]:
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)

    @property
    def client_ids(self) -> list[int]:
        return [p.client_id for p in self.members]

    def by_node(self, node_id: int) -> Participant | None:
        """The member behind a Flower node id; None for a node not asked this round."""
        return self._by_node.get(node_id)

    def member(self, client_id: int) -> Participant:
        """The member with this client id (KeyError when not asked this round)."""
        return self.members[self._slot_of[client_id] - 1]

    def client_id_of(self, node_id: int) -> int:
        """The client id behind a Flower node id; -1 for a node not asked this round."""
        member = self._by_node.get(node_id)
        return -1 if member is None else member.client_id

    def slot(self, client_id: int) -> int:
        """A member's SecAgg+ slot (1..n)."""
        return self._slot_of[client_id]

    def at_slot(self, slot: int) -> Participant | None:
        """The member in ``slot``; None outside 1..n."""
        return self.members[slot - 1] if 1 <= slot <= len(self.members) else None

    def without(self, client_ids: Iterable[int]) -> Cohort:
        """The same cohort less some members (slots renumbered)."""
        drop = set(client_ids)
        return Cohort(members=tuple(p for p in self.members if p.client_id not in drop))
