"""The forms being filled in (the Deploy and Modify modals' drafts), kept in the daemon's store
through the core's :class:`~opsbot.core.drafts.DraftStore`: a restart loses none, and each is
its opener's alone. The views stay pure builders; this is where a form is read and written."""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from opsbot.core.drafts import DraftNotYours, DraftStore
from opsbot.core.store import Store
from opsbot.slack.views.state import DraftGone, FormState, form_from_json, form_json

_T = TypeVar("_T")


class Drafts:
    """The forms being filled in, by key: what a modal's ``private_metadata`` points at.

    Kept in the daemon's store (:class:`~opsbot.core.drafts.DraftStore`), so a form outlives a
    restart; each belongs to the user who opened it, and only they may read or change it. The
    least recently used are dropped past ``limit`` and any unused for ``ttl`` seconds (by the
    wall clock, which a restart keeps). Thread-safe (Bolt runs listeners on a pool): each call
    is one store transaction, and every load and save copies, so a listener never changes a
    draft another is reading. What is shown once (``warnings``, ``summary``) is never kept."""

    def __init__(
        self,
        store: Store,
        *,
        limit: int = 1000,
        ttl: float = 24 * 3600,
        clock: Callable[[], float] = time.time,
    ):
        self._kept = DraftStore(store, limit=limit, ttl=ttl)
        self.clock = clock

    @property
    def ttl(self) -> float:
        return self._kept.ttl

    def save(self, state: FormState, owner: str) -> str:
        """Keep ``state`` (a copy) under its key for ``owner``, given one if it has none;
        return the key."""
        if not state.key:
            state.key = secrets.token_urlsafe(9)
        kept = dataclasses.replace(state, warnings=[], summary=[])  # shown once, never kept
        self._guard(lambda: self._kept.save(state.key, owner, form_json(kept), self.clock()))
        return state.key

    def load(self, key: str, owner: str) -> FormState:
        """A copy of ``owner``'s draft ``key``; DraftGone when the bot no longer holds it or
        another user opened it."""
        text = self._guard(lambda: self._kept.load(key, owner, self.clock()))
        if text is None:
            raise DraftGone(
                "This form is no longer held by opsbot (it was submitted, or left open over "
                f"{int(self.ttl // 3600)} hours): close it and open it again."
            )
        return form_from_json(text)

    def add_offered(self, key: str, owner: str, offered: Mapping[str, str]) -> None:
        """Add to draft ``key``'s :attr:`FormState.offered` the models a select offered since it
        was drawn (an external_select's answer, from the catalog of now), so the one picked is
        resolved; nothing else of the draft changes, whatever an action saves meanwhile."""

        def change(text: str) -> str:
            state = form_from_json(text)
            state.offered.update(offered)
            return form_json(state)

        self._guard(lambda: self._kept.update(key, owner, change))

    def drop(self, key: str, owner: str) -> None:
        """Forget ``owner``'s draft once its form is done with."""
        self._kept.drop(key, owner)

    def __len__(self) -> int:
        return self._kept.count()

    @staticmethod
    def _guard(call: Callable[[], _T]) -> _T:
        """``call``, another user's draft told as a form this user cannot use."""
        try:
            return call()
        except DraftNotYours as exc:
            raise DraftGone(
                "This form was opened by another Slack user: open your own with /deploy.",
                title=DraftNotYours.title,
            ) from exc
