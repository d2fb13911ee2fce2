"""The status bar: one line, parts at fixed places, the most important kept when the terminal is narrow,
and a sparkline of the recent rate."""

from fakes import FakeModel
from tui_helpers import make_app, ready

from anechat.engine.generate import GenerationStats
from anechat.tui.widgets import BARS, StatusBar, spark


def test_spark_scales_to_the_highest_recent_sample():
    assert spark([], 16) == []
    assert [b for b, _ in spark([0.0, 0.0], 16)] == [BARS[0]] * 2
    bars = spark([10.0, 20.0, 40.0], 16)
    assert [b for b, _ in bars] == [BARS[2], BARS[4], BARS[-1]] and bars[-1][1] == 1.0
    assert len(spark(range(1, 100), 16)) == 16 and spark(range(1, 100), 16)[-1][0] == BARS[-1]


def line_of(bar: StatusBar) -> str:
    return bar.render().plain


async def fill(app, pilot) -> StatusBar:
    await ready(pilot)
    bar = app.query_one(StatusBar)
    bar.show_model("a-model-with-a-rather-long-name-q4", "portable (numpy)")
    bar.show_rate(31.5, [30.0, 31.0, 31.5], live=True)
    bar.show_context(300, 4096)
    stats = GenerationStats(prompt_tokens=10, ttft_s=0.125, prefill_tok_s=1234.0)
    bar.show_last(stats)
    await pilot.pause()
    return bar


async def test_a_wide_bar_shows_every_part_and_a_new_figure_moves_nothing():
    app = make_app(FakeModel())
    async with app.run_test(size=(160, 20)) as pilot:
        bar = await fill(app, pilot)
        line = line_of(bar)
        for text in ("a-model-with-a-rather-long-name-q4 · portable (numpy)", "31.5 tok/s ▶", "ctx 300/4096",
                     "TTFT 125 ms · prefill 1234 tok/s"):
            assert text in line
        assert sum(ch in BARS for ch in line) == 3
        ctx_at = line.index("ctx")
        bar.show_rate(7.25, [30.0, 31.0, 31.5, 7.25], live=True)
        bar.show_context(3000, 4096)
        assert line_of(bar).index("ctx") == ctx_at and "  7.2 tok/s ▶" in line_of(bar)


async def test_at_80_columns_every_figure_and_the_sparkline_stay_and_the_name_is_whole():
    app = make_app(FakeModel())
    async with app.run_test(size=(80, 24)) as pilot:
        bar = await fill(app, pilot)
        bar.show_model("smollm2-135m", "portable (numpy)")
        await pilot.pause()
        line = line_of(bar)
        assert len(line) <= bar.size.width
        assert line.split()[0] == "smollm2-135m" and "portable (num" not in line  # not cut mid-word
        for text in ("31.5 tok/s ▶", "ctx 300/4096", "TTFT 125 ms"):
            assert text in line
        assert sum(ch in BARS for ch in line) == 3  # the sparkline


async def test_a_narrow_bar_keeps_the_model_and_the_gauge():
    app = make_app(FakeModel())
    async with app.run_test(size=(40, 20)) as pilot:
        bar = await fill(app, pilot)
        line = line_of(bar)
        assert len(line) <= bar.size.width
        assert line.startswith("a-model-with-a") and line.split()[0].endswith("…") and "31.5 tok/s ▶" in line
        assert "ctx" not in line and "TTFT" not in line
        bar.show_model("模型" * 20, "portable (numpy)")  # wide characters: two cells each
        from rich.cells import cell_len

        line = line_of(bar)
        assert cell_len(line) <= bar.size.width and "31.5 tok/s ▶" in line and "…" in line
