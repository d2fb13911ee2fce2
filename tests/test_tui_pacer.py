"""The redraw pacer: as fast as allowed while redraws are cheap, slower (within a bound) when each one
costs the main thread enough to take cores from the model."""

from anechat.tui.pacer import RenderPacer


class Clock:
    def __init__(self) -> None:
        self.wall = self.cpu = 0.0


def run(pacer: RenderPacer, clock: Clock, cost_s: float, frames: int) -> list[float]:
    seen = []
    for _ in range(frames):
        while not pacer.due():
            clock.wall += 0.01
        clock.cpu += cost_s  # what this redraw's layout and repaint took of the main thread
        pacer.drawn()
        seen.append(pacer.interval)
    return seen


def make() -> tuple[RenderPacer, Clock]:
    clock = Clock()
    return RenderPacer(fastest_s=0.25, slowest_s=1.0, budget=0.03, clock=lambda: clock.wall, cpu=lambda: clock.cpu), clock


def test_cheap_redraws_keep_the_fastest_pace():
    pacer, clock = make()
    assert run(pacer, clock, 0.002, 10) == [0.25] * 10


def test_expensive_redraws_space_out_up_to_the_bound_and_recover():
    pacer, clock = make()
    slow = run(pacer, clock, 0.030, 12)  # 30 ms per redraw asks for 1 s at a 3 % budget
    assert slow == sorted(slow) and 0.9 < slow[-1] <= 1.0
    assert run(pacer, clock, 0.300, 3)[-1] == 1.0  # never slower than the bound
    fast = run(pacer, clock, 0.001, 12)
    assert fast[-1] == 0.25


def test_the_first_redraw_comes_at_the_fastest_pace():
    pacer, clock = make()
    clock.wall += 0.24
    assert not pacer.due()
    clock.wall += 0.02
    assert pacer.due()
