"""The stream hold-back: which checks a growing completion needs, and how much of it may go out.

Bookkeeping over character offsets of the completion text only (no text, no I/O, no asyncio): event
lengths go in; the checks that are due and the number of events that may be released come out. The
stream checker runs the stages where this says, and `check_completion` runs the same checks on a
whole answer, so that both judge the same spans of the same text.

Two kinds of stage read a completion:

- The scan (the blacklist) re-reads the recent text at each check and judges the matches that end in
  text it has not judged yet, except within the last `lookahead` characters: what follows a match can
  still undo it ("pipe bomb" followed by "s" is another word). Text is released only once `reach`
  characters of judged text follow it: a match not found yet ends after the judged text, so (being
  at most `reach` long) it starts after the released text.
- The windowed stages (classifier, moderation hook) judge fixed windows [k*step, k*step + window) of
  the completion, each scored once when complete; the last window ends with the text, and a text no
  longer than one window is one window. Text is released only once every window that holds it has
  been judged: no character of a window that blocks has gone out, its context included.

Events are released whole and in order, once all of their text may go out.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Scan:
    """Read text[start:end]; judge the findings that end in (after, upto]."""

    start: int
    end: int
    after: int
    upto: int


@dataclass(frozen=True)
class Window:
    """Score text[start:end]."""

    start: int
    end: int


@dataclass(frozen=True)
class Checks:
    scan: Scan | None = None
    windows: tuple[Window, ...] = ()


class HoldBack:
    def __init__(self, reach: int | None, window: int | None, overlap: int = 0, lookahead: int = 1,
                 scan_context: int = 2048) -> None:
        """`reach`: the longest match the scan must catch whole (None: no scanning stage); `window` and
        `overlap`: the windowed stages' (None: no windowed stage); `scan_context`: how much judged text
        a scan re-reads before the new text (at least twice the reach)."""
        if window is not None and not 0 <= overlap < window:
            raise ValueError("the overlap must be smaller than the window")
        self.reach = reach
        self.window = window
        self.step = window - overlap if window is not None else 0
        self.lookahead = lookahead
        self.scan_context = max(scan_context, 2 * reach) if reach is not None else 0
        self.length = 0
        self.finished = False
        self.scanned = 0  # every match ending at or before this offset has been judged
        self.windows_done = 0  # windows judged, in order
        self._event_ends: deque[int] = deque()  # held events, by the offset where their text ends

    def add(self, chars: int) -> None:
        """One more event, carrying `chars` characters of text."""
        if self.finished:
            raise ValueError("the text is finished")
        self.length += chars
        self._event_ends.append(self.length)

    def finish(self) -> None:
        """No more text comes: the last window and the last characters can be judged."""
        self.finished = True

    def due(self) -> Checks:
        """The checks that can run now and have not run yet."""
        scan = None
        if self.reach is not None:
            upto = self.length if self.finished else max(0, self.length - self.lookahead)
            if upto > self.scanned:
                scan = Scan(max(0, self.scanned - self.scan_context), self.length, self.scanned, upto)
        windows = []
        index = self.windows_done
        while (window := self._window(index)) is not None:
            windows.append(window)
            index += 1
        return Checks(scan, tuple(windows))

    def checked(self, check: Scan | Window) -> None:
        """`check` (one of those `due` gave) has run; windows are checked in order."""
        if isinstance(check, Scan):
            self.scanned = max(self.scanned, check.upto)
        elif check == self._window(self.windows_done):
            self.windows_done += 1
        else:
            raise ValueError(f"{check} is not the next window due")

    def judged(self) -> int:
        """Every finding that ends at or before this offset is known (a window's ends with it)."""
        offset = self.length
        if self.reach is not None:
            offset = min(offset, self.scanned)
        if self.window is not None:
            pending = self._window_end(self.windows_done)
            if pending is not None:
                offset = min(offset, pending - 1)
        return offset

    def releasable(self) -> int:
        """Text before this offset may go out: no check still to come can block any of it."""
        offset = self.length
        if self.reach is not None and not (self.finished and self.scanned >= self.length):
            offset = min(offset, self.scanned - self.reach)
        if self.window is not None and self._window_end(self.windows_done) is not None:
            offset = min(offset, self.windows_done * self.step)
        return max(0, offset)

    def release(self) -> int:
        """How many of the held events go out now (they are no longer held)."""
        limit = self.releasable()
        count = 0
        while self._event_ends and self._event_ends[0] <= limit:
            self._event_ends.popleft()
            count += 1
        return count

    @property
    def held(self) -> int:
        return len(self._event_ends)

    def _window_end(self, index: int) -> int | None:
        """Where window `index` ends; None when the finished text has no such window (the one before
        it reached the end)."""
        start = index * self.step
        if not self.finished:
            return start + self.window
        if start >= self.length or (index > 0 and start - self.step + self.window >= self.length):
            return None
        return min(start + self.window, self.length)

    def _window(self, index: int) -> Window | None:
        """Window `index`, if it is complete and not judged yet."""
        if self.window is None:
            return None
        end = self._window_end(index)
        if end is None or end > self.length:
            return None
        return Window(index * self.step, end)
