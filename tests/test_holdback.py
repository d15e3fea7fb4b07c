"""The stream hold-back alone: event lengths in, checks due and release counts out."""

from __future__ import annotations

import random

import pytest

from gateway.holdback import HoldBack, Scan, Window


def run_checks(holdback: HoldBack) -> tuple[Scan | None, tuple[Window, ...]]:
    """Run (here: only mark as run) what is due, as the stream checker does; what was due."""
    due = holdback.due()
    if due.scan is not None:
        holdback.checked(due.scan)
    for window in due.windows:
        holdback.checked(window)
    return due.scan, due.windows


# (event lengths, then per step: the scan's (start, end, after, upto) or None, and the events released)
SCAN_ONLY = [  # reach 10, lookahead 1
    ([0], [(None, 1)]),  # an empty first event (the role) goes at once
    ([4, 4, 4, 4], [((0, 4, 0, 3), 0), ((0, 8, 3, 7), 0), ((0, 12, 7, 11), 0), ((0, 16, 11, 15), 1)]),
    ([30], [((0, 30, 0, 29), 0)]),  # one long event: never out before its end is 10 chars behind
    ([30, 0], [((0, 30, 0, 29), 0), (None, 0)]),
    ([30, 12], [((0, 30, 0, 29), 0), ((0, 42, 29, 41), 1)]),
]


@pytest.mark.parametrize(("events", "steps"), SCAN_ONLY)
def test_the_scan_judges_each_end_once_and_releases_reach_behind(events, steps):
    holdback = HoldBack(reach=10, window=None, lookahead=1)
    for chars, (scan, released) in zip(events, steps, strict=True):
        holdback.add(chars)
        ran, windows = run_checks(holdback)
        assert ((ran.start, ran.end, ran.after, ran.upto) if ran else None) == scan
        assert windows == ()
        assert holdback.release() == released


def test_the_scan_rereads_only_its_context():
    holdback = HoldBack(reach=10, window=None, lookahead=1, scan_context=100)
    holdback.add(500)
    run_checks(holdback)
    holdback.add(50)
    scan, _ = run_checks(holdback)
    assert (scan.start, scan.end, scan.after, scan.upto) == (399, 550, 499, 549)
    assert HoldBack(reach=80, window=None, scan_context=100).scan_context == 160  # twice the reach at least


# (window, overlap, event lengths, windows due after each event, events released after each)
WINDOWS = [
    (8, 4, [3, 3, 3], [[], [], [(0, 8)]], [0, 0, 1]),
    (8, 4, [8, 4, 4], [[(0, 8)], [(4, 12)], [(8, 16)]], [0, 1, 1]),
    (8, 0, [8, 8], [[(0, 8)], [(8, 16)]], [1, 1]),
    (8, 4, [20], [[(0, 8), (4, 12), (8, 16), (12, 20)]], [0]),
]


@pytest.mark.parametrize(("window", "overlap", "events", "due", "released"), WINDOWS)
def test_windows_are_scored_when_complete_and_text_released_when_all_its_windows_are(
        window, overlap, events, due, released):
    holdback = HoldBack(reach=None, window=window, overlap=overlap)
    for chars, expected_windows, expected_released in zip(events, due, released, strict=True):
        holdback.add(chars)
        scan, windows = run_checks(holdback)
        assert scan is None
        assert [(w.start, w.end) for w in windows] == expected_windows
        assert holdback.release() == expected_released


@pytest.mark.parametrize(("length", "windows"), [
    (0, []),
    (5, [(0, 5)]),  # no longer than a window: the whole text, one window
    (8, [(0, 8)]),
    (9, [(0, 8), (4, 9)]),
    (12, [(0, 8), (4, 12)]),
    (13, [(0, 8), (4, 12), (8, 13)]),
])
def test_a_finished_text_has_windows_up_to_its_end(length, windows):
    holdback = HoldBack(reach=None, window=8, overlap=4)
    holdback.add(length)
    holdback.finish()
    assert [(w.start, w.end) for w in run_checks(holdback)[1]] == windows
    assert holdback.releasable() == length and holdback.release() == 1 and holdback.held == 0


def test_nothing_is_released_past_a_window_not_scored_yet():
    holdback = HoldBack(reach=None, window=8, overlap=4)
    holdback.add(12)
    assert [(w.start, w.end) for w in holdback.due().windows] == [(0, 8), (4, 12)]
    assert holdback.releasable() == 0
    holdback.checked(Window(0, 8))
    assert holdback.releasable() == 4  # [4, 8) is in the second window too
    with pytest.raises(ValueError, match="not the next window"):
        holdback.checked(Window(8, 16))
    holdback.checked(Window(4, 12))
    assert holdback.releasable() == 8 and holdback.judged() == 12


def test_judged_says_which_findings_are_final():
    holdback = HoldBack(reach=10, window=8, overlap=4, lookahead=1)
    holdback.add(10)
    assert holdback.judged() == 0
    run_checks(holdback)
    assert holdback.judged() == 9  # the scan judged up to 9; the next window ends at 12
    holdback.finish()
    run_checks(holdback)
    assert holdback.judged() == 10 and holdback.releasable() == 10


def test_both_kinds_hold_back_as_far_as_the_stricter():
    holdback = HoldBack(reach=3, window=8, overlap=4, lookahead=1)
    for _ in range(20):
        holdback.add(1)
        run_checks(holdback)
    # The scan alone would release up to 16 (19 judged, 3 behind), the windows only up to 16 too:
    # windows [0,8) ... [12,20) scored, so everything before 16 is in scored windows only.
    assert holdback.releasable() == 16
    holdback = HoldBack(reach=12, window=8, overlap=4, lookahead=1)
    for _ in range(20):
        holdback.add(1)
        run_checks(holdback)
    assert holdback.releasable() == 7


def test_no_text_after_finish():
    holdback = HoldBack(reach=10, window=None)
    holdback.finish()
    with pytest.raises(ValueError, match="finished"):
        holdback.add(1)


@pytest.mark.parametrize("seed", range(40))
def test_no_released_character_is_ever_inside_a_span_blocked_later(seed):
    """Random text lengths cut into random events (including empty ones and one character each);
    random blacklist matches no longer than the reach, and random 'bad' spans that make every window
    holding them block. Whatever the cut: a blocked span (the match, or the whole window) is never
    one whose characters went out before it was found, every match is judged exactly once by a scan
    that read all of it, and the windows are those of the same text arriving whole."""
    rng = random.Random(seed)
    reach, window, overlap = rng.randint(1, 40), rng.randint(16, 96), 0
    overlap = rng.randint(0, window - 1)
    length = rng.randint(0, 700)
    matches = set()
    for _ in range(rng.randint(0, 12) if length else 0):
        start = rng.randint(0, max(0, length - 1))
        matches.add((start, min(length, start + rng.randint(1, reach))))
    bad = [(start, start + 3) for start in (rng.randint(0, max(0, length - 3)) for _ in range(rng.randint(0, 4)))]
    events = []
    while sum(events) < length:
        events.append(min(length - sum(events), rng.choice([0, 1, 1, 2, 5, 17, 64, rng.randint(1, 300)])))

    holdback = HoldBack(reach=reach, window=window, overlap=overlap, lookahead=rng.randint(0, 3),
                        scan_context=rng.choice([0, 50, 2048]))
    released_upto, released_events = 0, 0  # text offset the released events reach, and how many
    event_ends, total = [], 0
    judged_matches: list[tuple[int, int]] = []
    scored_windows: list[tuple[int, int]] = []

    def step(finished: bool) -> None:
        nonlocal released_upto, released_events
        if finished:
            holdback.finish()
        scan, windows = run_checks(holdback)
        blocked = []
        if scan is not None:
            found = [m for m in matches if scan.after < m[1] <= scan.upto]
            assert all(scan.start <= start and end <= scan.end for start, end in found)  # read whole
            judged_matches.extend(found)
            blocked += found
        for checked in windows:
            scored_windows.append((checked.start, checked.end))
            if any(checked.start <= start and end <= checked.end for start, end in bad):
                blocked.append((checked.start, checked.end))
        for start, _ in blocked:
            assert released_upto <= start, f"released up to {released_upto}, then blocked from {start}"
        count = holdback.release()
        released_events += count
        if released_events:
            released_upto = max(released_upto, event_ends[released_events - 1])
        assert released_upto <= holdback.releasable()

    for chars in events:
        total += chars
        event_ends.append(total)
        holdback.add(chars)
        step(False)
    step(True)

    assert sorted(judged_matches) == sorted(matches)
    assert holdback.held == 0 and released_upto == length
    whole = HoldBack(reach=reach, window=window, overlap=overlap)
    whole.add(length)
    whole.finish()
    assert scored_windows == [(w.start, w.end) for w in whole.due().windows]
