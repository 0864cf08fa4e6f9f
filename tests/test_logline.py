"""rules/logline.py: a command's log line, the one format the pass writes and the CLI reads."""

from __future__ import annotations

import time

from wirt_wrapper.rules import logline, status


def test_a_line_is_never_a_second_before_a_time_read_earlier() -> None:
    """`wirt reboot --wait` compares the line's time with status.xml's <read-at>, which root
    took (time.time()) before the line was written.  C's time(), which time.strftime() asks
    when given no time, lags time.time() by a few ms after each second begins: a line
    stamped with it could be a second early (on the project's machine in about 700 of
    240,000 tries over 3 s).  Across two second boundaries, never once."""
    crossed, last, tries = 0, int(time.time()), 0
    while crossed < 2:
        before = time.time()
        line_seconds = logline.seconds(logline.now_text())
        read_at = status.unstamp(status.stamp(before))
        assert line_seconds is not None and read_at is not None
        assert line_seconds >= read_at, (logline.now_text(), status.stamp(before))
        tries += 1
        if int(before) != last:
            crossed, last = crossed + 1, int(before)
    assert tries > 1000  # it looked closely at both boundaries


def test_a_line_reads_back() -> None:
    line = logline.render(stamp=logline.now_text(), vm="web", action="autostart",
                          params="--disable", outcome="done", message="autostart unset",
                          file="autostart", history="~/wirt/history/x", cid="c-1")
    found = logline.parse(line)
    assert found is not None
    assert (found["vm"], found["action"], found["params"], found["outcome"], found["history"],
            found["id"]) == ("web", "autostart", "--disable", "done", "~/wirt/history/x", "c-1")
