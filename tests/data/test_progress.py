"""Progress lines: counts, rate and time left, throttled, and always a last line."""

import io

from hope_mega.progress import Progress, format_duration


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_lines_show_rate_and_eta_throttled_with_a_final_line():
    clock, out = Clock(), io.StringIO()
    meter = Progress("ppl", 1000, "tokens", every_s=10, stream=out, clock=clock)
    clock.now += 4
    meter.update(200)  # 4 s since start: under every_s, no line
    assert out.getvalue() == ""
    clock.now += 6
    meter.update(300)  # 10 s, 500 done: 50 tokens/s, 500 left -> 10 s
    clock.now += 10
    meter.update(500)  # done: always printed
    assert out.getvalue().splitlines() == [
        "[ppl] 500/1,000 tokens (50%), 50.0 tokens/s, 0:10 elapsed, ETA 0:10",
        "[ppl] 1,000/1,000 tokens (100%), 50.0 tokens/s, 0:20 elapsed",
    ]


def test_disabled_prints_nothing_and_durations_read_as_clock_times():
    out = io.StringIO()
    meter = Progress("x", 1, "docs", stream=out, enabled=False)
    meter.update(1)
    assert out.getvalue() == ""
    assert [format_duration(s) for s in (5, 65, 3600 + 62)] == ["0:05", "1:05", "1:01:02"]
