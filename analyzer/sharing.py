"""Equal immutable values shared instead of copied (records and findings of repeated commands).

A flood repeats one command 100,000 times, and the records and findings of the run live to
its end: each would own its copies of equal pairs, tuples, texts and endpoints. A
:class:`Sharing` table hands back the first object equal to a new one, so the repeats
refer to one object. The table's keys are the shared objects themselves (it keeps
nothing alive that a record does not keep, only its slots) and it is emptied when full,
so it stays bounded. Only values whose equality means interchangeability may go in
(str, bytes, and tuples or frozen dataclasses of them and ints; never a mix of ints and
bools at one position, since ``1 == True``): then the output cannot change.
"""

from __future__ import annotations

from typing import TypeVar

_T = TypeVar("_T")


class Sharing:
    """A bounded table of shared values: ``share(obj)`` is the first object equal to ``obj`` seen."""

    __slots__ = ("size", "text_max", "table", "get")

    def __init__(self, size: int, text_max: int = 256) -> None:
        self.size = size  #: values held before the table is emptied
        #: texts longer than this are not looked up by :meth:`text` (hashing them costs more than sharing saves)
        self.text_max = text_max
        self.table: dict[object, object] = {}
        self.get = self.table.get  #: the shared object equal to a value, or None (no insertion)

    def __call__(self, obj: _T) -> _T:
        table = self.table
        hit = table.get(obj)
        if hit is None:
            if len(table) >= self.size:
                table.clear()
            table[obj] = obj
            return obj
        return hit  # type: ignore[return-value]

    def text(self, value: _T) -> _T:
        """``self(value)`` for a str or bytes not longer than :attr:`text_max`; others (and None) as given."""
        if value is None or len(value) > self.text_max:  # type: ignore[arg-type]
            return value
        return self(value)
