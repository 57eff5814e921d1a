"""Flow results shared by the engine, the record builder, the rules and the reports.

Memory (issue 7): a flood of one-SYN flows keeps one :class:`FlowSummary` per flow until
the reports are written, so its size is the per-flow floor of a run. The counters that are
zero for almost every flow (gaps, retransmissions, dropped segments, elided events) live
in one :class:`RareCounts` object, made when the first of them becomes non-zero and
dropped again when all are back to zero; each stays readable and writable under its old
name through a property. ``key`` is computed from ``capture`` and ``first_frame`` instead
of being stored. Measured with tracemalloc (CPython 3.11): 360 -> 176 bytes per summary
of a one-SYN flow (304 bytes of slots plus a 56-byte key tuple before). The five categorical
values (protocol, detected_by, saw_syn, ended, tls) share one slot too: a tuple shared by every
flow with the same values (176 -> 144 bytes).

:class:`FlowResult` does not keep the community id string the pipeline made for it (~80 bytes a
flow until the reports are written): it computes it again when asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast, overload

from analyzer import community_id as _cid
from analyzer.model import Endpoint
from analyzer.protocols.base import LocatedEvent


@dataclass(slots=True)
class RareCounts:
    """The counters of a flow that are zero for almost every flow (see :class:`FlowSummary`)."""

    gaps_to_server: int = 0
    gaps_to_client: int = 0
    gap_bytes_to_server: int = 0
    gap_bytes_to_client: int = 0
    retransmitted_bytes: int = 0
    overlap_conflicts: int = 0
    out_of_window_to_server: int = 0
    out_of_window_to_client: int = 0
    late_bytes_to_server: int = 0
    late_bytes_to_client: int = 0
    after_fin_bytes_to_server: int = 0
    after_fin_bytes_to_client: int = 0
    events_elided: int = 0
    commands_elided: int = 0
    replies_elided: int = 0
    streams: dict[str, list[tuple[str, int, Any]]] | None = None


#: a RareCounts equal to this one holds nothing: its flow goes back to ``rare = None``
_NOTHING = RareCounts()

T = TypeVar("T")


class _Rare(Generic[T]):
    """A :class:`FlowSummary` attribute stored in its :class:`RareCounts` (``default`` while it has none).

    Setting the default on a flow without one makes none; setting the last value that differed
    from its default back to it drops the flow's RareCounts (so ``rare is None`` exactly when
    every counter is at its default, whatever the order of the updates).
    """

    __slots__ = ("default", "name")

    def __init__(self, default: T) -> None:
        self.default = default
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _Rare[T]: ...

    @overload
    def __get__(self, obj: FlowSummary, owner: type | None = None) -> T: ...

    def __get__(self, obj: FlowSummary | None, owner: type | None = None) -> T | _Rare[T]:
        if obj is None:
            return self
        r = obj.rare
        return self.default if r is None else cast(T, getattr(r, self.name))

    def __set__(self, obj: FlowSummary, value: T) -> None:
        r = obj.rare
        if r is None:
            if value == self.default:
                return
            r = obj.rare = RareCounts()
            setattr(r, self.name, value)
        else:
            setattr(r, self.name, value)
            if value == self.default and r == _NOTHING:
                obj.rare = None


#: names of the values in FlowSummary.cats, in order
CAT_FIELDS = ("protocol", "detected_by", "saw_syn", "ended", "tls")
_UNSET: Any = object()  # a FlowSummary() keyword not given
#: every distinct FlowSummary.cats tuple made so far, to itself (a few dozen in practice: fixed vocabularies)
_CATS: dict[tuple[Any, ...], tuple[Any, ...]] = {}
_CATS_MAX = 4096  # ours: past it (values no engine makes), new tuples are simply not shared
_ATOMS = frozenset({str, bool, type(None)})  # shared only when every value is exactly one of these


def _shared_cats(cats: tuple[Any, ...]) -> tuple[Any, ...]:
    """The shared tuple equal to ``cats`` (same types too: True and 1 are never merged)."""
    if not all(v.__class__ in _ATOMS for v in cats):  # (1 == True: such a tuple would find a shared one)
        return cats
    shared = _CATS.get(cats)
    if shared is not None:
        return shared
    if len(cats) == 5 and len(_CATS) < _CATS_MAX:
        _CATS[cats] = cats
    return cats


class _Cat(Generic[T]):
    """A :class:`FlowSummary` attribute stored in its shared ``cats`` tuple, at ``index``."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _Cat[T]: ...

    @overload
    def __get__(self, obj: FlowSummary, owner: type | None = None) -> T: ...

    def __get__(self, obj: FlowSummary | None, owner: type | None = None) -> T | _Cat[T]:
        if obj is None:
            return self
        return cast(T, obj.cats[self.index])

    def __set__(self, obj: FlowSummary, value: T) -> None:
        cats = obj.cats
        i = self.index
        old = cats[i]
        if old is value:
            return
        obj.cats = _shared_cats(cats[:i] + (value,) + cats[i + 1 :])


@dataclass(slots=True, init=False)
class FlowSummary:
    """One TCP connection of interest, as reported in ``report.json`` ``flows``.

    Besides the fields below, these attributes read and write as plain ones (properties over
    :attr:`rare`; 0, or None for ``streams``, when ``rare`` is None):

    * ``gaps_to_server``, ``gaps_to_client``, ``gap_bytes_to_server``, ``gap_bytes_to_client``:
      holes reassembly declared, per direction;
    * ``retransmitted_bytes``; ``overlap_conflicts``: overlapping bytes with different content
      (first arrival kept);
    * ``out_of_window_to_server``/``_to_client``: segments (and FINs) dropped for lying more than
      MAX_WINDOW from the stream; ``late_bytes_to_*``: bytes dropped because they lie before the
      stream base or inside a gap already declared; ``after_fin_bytes_to_*``: bytes dropped
      because they lie at or beyond the direction's FIN;
    * ``events_elided``: located events not kept in ``events`` (``commands_elided`` +
      ``replies_elided``); ``commands_elided``: plain client commands not kept (NOOP, FETCH, RCPT
      without forwarding ...); ``replies_elided``: server replies not kept (answers to those
      commands, untagged data ...);
    * ``streams``: raw delivery log (tests only);
    * ``key``: (capture, first frame), read only: the sort key; ids are assigned in this order.

    ``protocol``, ``detected_by``, ``saw_syn``, ``ended`` and ``tls`` read and write as plain
    attributes too (documented where they are defined, below): one ``cats`` tuple holds them,
    shared by every flow with the same five values.

    The constructor takes the fields, in field order (``FlowSummary(*field values)`` rebuilds a
    summary), and by keyword the five categorical values (required unless ``cats`` is given; named
    ones replace those of ``cats``) and any of the attributes above (``key`` must equal
    ``(capture, first_frame)``).
    """

    capture: int  #: index of the capture file in the run
    client: Endpoint
    server: Endpoint
    first_frame: int
    last_frame: int
    first_ts_ns: int
    last_ts_ns: int
    packets_to_server: int
    packets_to_client: int
    bytes_to_server: int  #: payload bytes delivered in stream order (retransmissions not counted)
    bytes_to_client: int
    #: dissected events, in capture order: the first flows.table.EVENTS_KEPT_FIRST, then only those the
    #: records and rules need (flows.table._Retention); the others are counted (``events_elided``). The
    #: engine makes it a list at the first event; a flow without events shares the empty tuple (a flood
    #: of one-SYN flows would otherwise pay an empty list each)
    events: Sequence[LocatedEvent]
    #: the rarely non-zero counters, None while all are zero (read them through their properties)
    rare: RareCounts | None
    #: (protocol, detected_by, saw_syn, ended, tls), one tuple shared by every flow with the same values
    #: (read and write them by name: :class:`_Cat` properties)
    cats: tuple[str | None, str, bool, str, str | None]

    #: ``FlowSummary(*field values)`` rebuilds a summary (analyzer.parallel's codec takes its fast path)
    INIT_TAKES_FIELDS = True

    def __init__(self, capture: int, client: Endpoint, server: Endpoint, first_frame: int, last_frame: int,
                 first_ts_ns: int, last_ts_ns: int, packets_to_server: int, packets_to_client: int,
                 bytes_to_server: int, bytes_to_client: int, events: Sequence[LocatedEvent] = (),
                 rare: RareCounts | None = None, cats: tuple[str | None, str, bool, str, str | None] | None = None,
                 *, protocol: Any = _UNSET, detected_by: Any = _UNSET, saw_syn: Any = _UNSET, ended: Any = _UNSET,
                 tls: Any = _UNSET, key: tuple[int, int] | None = None,
                 gaps_to_server: int = 0, gaps_to_client: int = 0, gap_bytes_to_server: int = 0,
                 gap_bytes_to_client: int = 0, retransmitted_bytes: int = 0, overlap_conflicts: int = 0,
                 out_of_window_to_server: int = 0, out_of_window_to_client: int = 0,
                 late_bytes_to_server: int = 0, late_bytes_to_client: int = 0,
                 after_fin_bytes_to_server: int = 0, after_fin_bytes_to_client: int = 0,
                 events_elided: int = 0, commands_elided: int = 0, replies_elided: int = 0,
                 streams: dict[str, list[tuple[str, int, Any]]] | None = None) -> None:
        if key is not None and key != (capture, first_frame):
            raise ValueError(f"FlowSummary key {key!r} is not (capture, first_frame) {capture, first_frame}")
        given = (protocol, detected_by, saw_syn, ended, tls)
        if cats is None:
            if _UNSET in given:
                missing = [n for n, v in zip(CAT_FIELDS, given) if v is _UNSET]
                raise TypeError(f"FlowSummary() missing keyword arguments: {', '.join(missing)}")
            cats = given  # type: ignore[assignment]
        elif _UNSET in given:  # some named on top of a tuple of them
            cats = tuple(c if v is _UNSET else v for c, v in zip(cats, given))  # type: ignore[assignment]
        else:
            cats = given  # type: ignore[assignment]
        self.cats = _shared_cats(cats)  # type: ignore[arg-type]
        self.capture = capture
        self.client = client
        self.server = server
        self.first_frame = first_frame
        self.last_frame = last_frame
        self.first_ts_ns = first_ts_ns
        self.last_ts_ns = last_ts_ns
        self.packets_to_server = packets_to_server
        self.packets_to_client = packets_to_client
        self.bytes_to_server = bytes_to_server
        self.bytes_to_client = bytes_to_client
        self.events = events
        if rare is None:
            counts = (gaps_to_server, gaps_to_client, gap_bytes_to_server, gap_bytes_to_client, retransmitted_bytes,
                      overlap_conflicts, out_of_window_to_server, out_of_window_to_client, late_bytes_to_server,
                      late_bytes_to_client, after_fin_bytes_to_server, after_fin_bytes_to_client, events_elided,
                      commands_elided, replies_elided)  # RareCounts' fields, in order
            if any(counts) or streams is not None:
                rare = RareCounts(*counts, streams)
        self.rare = rare

    @property
    def key(self) -> tuple[int, int]:
        """(capture, first frame): the sort key; flow ids are assigned in this order."""
        return (self.capture, self.first_frame)

    def rare_counts(self) -> RareCounts:
        """:attr:`rare`, made first if the flow has none (for writers that update several counters)."""
        r = self.rare
        if r is None:
            r = self.rare = RareCounts()
        return r

    # the categorical values, under their names (not fields: stored in ``cats``)
    protocol = _Cat[str | None](0)  #: imap/pop3/smtp/submission/lmtp, None for non-mail TCP (all-tcp mode)
    detected_by = _Cat[str](1)  #: "port", "content" or "port+content"
    saw_syn = _Cat[bool](2)  #: the connection start was captured
    #: "fin" (both sides), "half-fin", "rst", "reused" (new SYN on the 4-tuple), "idle", "eof"
    ended = _Cat[str](3)
    tls = _Cat[str | None](4)  #: "implicit" (TLS from the first byte), "starttls", or None (cleartext)

    # the rarely non-zero counters, under their old names (not fields: stored in ``rare``)
    gaps_to_server = _Rare(0)
    gaps_to_client = _Rare(0)
    gap_bytes_to_server = _Rare(0)
    gap_bytes_to_client = _Rare(0)
    retransmitted_bytes = _Rare(0)
    overlap_conflicts = _Rare(0)
    out_of_window_to_server = _Rare(0)
    out_of_window_to_client = _Rare(0)
    late_bytes_to_server = _Rare(0)
    late_bytes_to_client = _Rare(0)
    after_fin_bytes_to_server = _Rare(0)
    after_fin_bytes_to_client = _Rare(0)
    events_elided = _Rare(0)
    commands_elided = _Rare(0)
    replies_elided = _Rare(0)
    streams = _Rare[dict[str, list[tuple[str, int, Any]]] | None](None)


#: names FlowSummary reads and writes through ``rare``
RARE_FIELDS = tuple(RareCounts.__dataclass_fields__)


class FlowResult:
    """A flow of interest with its run-wide id: ``FlowResult(id, community_id, summary)``.

    ``community_id`` (Community ID v1 of the 5-tuple) None means: computed from the summary's
    endpoints on each read (about 4 us), which saves an ~80-byte string per flow while the
    flows are held (the pipeline's case; the report remembers the ones findings read). A
    given value (tests pass made-up ids) is stored and returned as given. Compares and
    prints like the dataclass it was.
    """

    __slots__ = ("id", "summary", "_community_id")

    id: int  #: 0-based, in order of (capture, first frame): deterministic
    summary: FlowSummary

    def __init__(self, id: int, community_id: str | None, summary: FlowSummary) -> None:  # noqa: A002
        self.id = id
        self.summary = summary
        self._community_id = community_id

    @property
    def community_id(self) -> str:
        """Community ID v1 of the 5-tuple."""
        cid = self._community_id
        if cid is None:
            c, s = self.summary.client, self.summary.server
            return _cid.community_id(c.ip, c.port, s.ip, s.port)
        return cid

    @community_id.setter
    def community_id(self, value: str) -> None:
        self._community_id = value

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, FlowResult)
        return (self.id, self.community_id, self.summary) == (other.id, other.community_id, other.summary)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass

    def __repr__(self) -> str:
        return f"FlowResult(id={self.id!r}, community_id={self.community_id!r}, summary={self.summary!r})"
