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
    assert slow[0] > 0.9  # the first sample is all there is to go on
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


def test_the_next_answer_goes_on_at_the_learned_pace():
    pacer, clock = make()
    learned = run(pacer, clock, 0.030, 12)[-1]
    clock.wall += 5.0
    clock.cpu += 0.5  # between answers: typing, the new message's layout; not this answer's spending
    pacer.start()
    clock.wall += 0.26
    assert pacer.due()  # its first words still come at once
    clock.cpu += 0.030
    pacer.drawn()
    assert abs(pacer.interval - learned) < 0.01
    clock.wall += 0.5
    assert not pacer.due()
    clock.wall += learned
    assert pacer.due()


def test_the_budget_follows_where_the_model_computes():
    from fakes import FakeModel
    from tui_helpers import make_app

    from anechat.runtime.coreml import CoreMLBackend
    from anechat.runtime.portable import PortableBackend
    from anechat.runtime.select import shares_cores

    assert shares_cores(PortableBackend())
    assert shares_cores(CoreMLBackend("CPU_ONLY"))
    assert not shares_cores(CoreMLBackend("CPU_AND_NE")) and not shares_cores(CoreMLBackend("ALL"))
    app = make_app(FakeModel())
    assert app._budget(FakeModel(shares_cores=True)) < app._budget(FakeModel(shares_cores=False))
