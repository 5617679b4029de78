"""Notebook display of the room's tables: :class:`Table`, a list that shows itself as an HTML table.

The renderers themselves (``sites_html``, ``run_html``, :func:`records`, ...) are the analyst's
(:mod:`fedjax_room.analyst.views`): the analyst types render with them outside a notebook too. ``%room
sites|runs|budget|audit`` return a :class:`Table`, so ``sites = %room sites`` gives the list of ``SiteInfo``
and still displays as a table.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fedjax_room.analyst.views import VIEWS, html_table, records, text_table

__all__ = ["Table"]


class Table(list):
    """A list that displays itself as an HTML table in notebooks and as a text table elsewhere.

    ``Table(items, view)``: ``items`` stay the original objects (``SiteInfo``, ...); ``view`` names how to
    show them (a key of :data:`~fedjax_room.analyst.views.VIEWS`); ``source`` is what the view renders if not
    the items themselves.
    """

    def __init__(self, items: Iterable[Any] = (), view: str = "", *, source: Any = None) -> None:
        super().__init__(items)
        if view and view not in VIEWS:
            raise ValueError(f"unknown view {view!r}; choose one of {', '.join(VIEWS)}")
        self._view = view
        self._source = source

    def _data(self) -> Any:
        return self._source if self._source is not None else list(self)

    def _repr_html_(self) -> str:
        if not self._view:
            return html_table(records(list(self)))
        return VIEWS[self._view].html(self._data())

    def to_text(self) -> str:
        """The table as fixed-width text."""
        if not self._view:
            return text_table(records(list(self)))
        return VIEWS[self._view].text(self._data())

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text("Table(...)" if cycle else self.to_text())
