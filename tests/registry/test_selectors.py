"""Selectors and outlier ejection: pure logic, no I/O."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from tether.registry import InstanceRecord, NoCandidates, OutlierEjector, make_selector
from tether.registry.selectors import SELECTOR_NAMES, Selector


def inst(instance_id: str) -> InstanceRecord:
    return InstanceRecord(instance_id=instance_id, address="http://x:1")


POOL = [inst("a"), inst("b"), inst("c")]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_make_selector_names() -> None:
    for name in SELECTOR_NAMES:
        selector = make_selector(name)
        assert isinstance(selector, Selector)
        assert selector.name == name
    assert make_selector("least-outstanding").name == "least_outstanding"
    assert make_selector().name == "round_robin"
    with pytest.raises(ValueError, match="round_robin, random, first, least_outstanding"):
        make_selector("fastest")


@pytest.mark.parametrize("name", SELECTOR_NAMES)
def test_empty_pool_raises(name: str) -> None:
    with pytest.raises(NoCandidates):
        make_selector(name).select([])


def test_round_robin_spreads_evenly() -> None:
    selector = make_selector("round_robin")
    counts = Counter(selector.select(POOL).instance_id for _ in range(300))
    assert counts == {"a": 100, "b": 100, "c": 100}
    # Consecutive picks never repeat while the pool is stable.
    picks = [selector.select(POOL).instance_id for _ in range(6)]
    assert all(x != y for x, y in itertools.pairwise(picks))


def test_round_robin_follows_pool_changes() -> None:
    selector = make_selector("round_robin")
    pool = POOL[:2]
    assert {selector.select(pool).instance_id for _ in range(4)} == {"a", "b"}
    assert {selector.select(POOL).instance_id for _ in range(3)} == {"a", "b", "c"}


def test_first_and_random() -> None:
    assert {make_selector("first").select(POOL).instance_id for _ in range(10)} == {"a"}
    selector = make_selector("random", rng=random.Random(7))
    counts = Counter(selector.select(POOL).instance_id for _ in range(3000))
    assert set(counts) == {"a", "b", "c"}
    assert all(800 < n < 1200 for n in counts.values())


def test_selectors_work_on_plain_urls() -> None:
    urls = ["http://a:1", "http://b:1"]
    selector = make_selector("least_outstanding", rng=random.Random(1))
    with selector.track(urls[0]):
        assert selector.outstanding("http://a:1") == 1
        assert selector.select(urls) == "http://b:1"
    assert selector.outstanding("http://a:1") == 0


def test_least_outstanding_prefers_less_loaded() -> None:
    selector = make_selector("least_outstanding", rng=random.Random(3))
    for _ in range(5):
        selector.acquire(POOL[0])
    selector.acquire(POOL[1])
    counts = Counter(selector.select(POOL).instance_id for _ in range(600))
    # c (idle) wins whenever it is drawn (2/3 of draws); a (busiest) never wins.
    assert counts["a"] == 0
    assert counts["c"] > counts["b"] > 0
    assert 350 < counts["c"] < 450


def test_least_outstanding_balances_under_load() -> None:
    selector = make_selector("least_outstanding", rng=random.Random(5))
    for _ in range(30):  # 30 long calls in flight, none finishing
        selector.acquire(selector.select(POOL))
    loads = [selector.outstanding(i) for i in POOL]
    assert sum(loads) == 30 and max(loads) - min(loads) <= 2


def test_release_never_goes_negative_and_track_releases_on_error() -> None:
    selector = make_selector("least_outstanding")
    selector.release(POOL[0])
    assert selector.outstanding(POOL[0]) == 0
    with pytest.raises(RuntimeError), selector.track(POOL[0]):
        assert selector.outstanding(POOL[0]) == 1
        raise RuntimeError
    assert selector.outstanding(POOL[0]) == 0


def test_ejection_backoff_and_recovery() -> None:
    clock = FakeClock()
    ejector = OutlierEjector(base_seconds=1, max_seconds=30, clock=clock)
    a, b, c = POOL
    assert ejector.available(POOL) == POOL

    assert ejector.record_failure(a) == 1
    assert ejector.is_ejected(a)
    assert ejector.available(POOL) == [b, c]
    assert ejector.record_failure(a) == 1  # in-flight failures do not stack

    clock.advance(1.0)
    assert not ejector.is_ejected(a)
    assert ejector.available(POOL) == POOL  # back in rotation after the period

    assert ejector.record_failure(a) == 2  # fails again: exponential backoff
    clock.advance(2.0)
    assert ejector.record_failure(a) == 4
    clock.advance(4.0)
    ejector.record_success(a)  # recovered: the count restarts
    assert ejector.failures(a) == 0
    assert ejector.record_failure(a) == 1


def test_ejection_caps_at_max() -> None:
    clock = FakeClock()
    ejector = OutlierEjector(base_seconds=1, max_seconds=30, clock=clock)
    periods = []
    for _ in range(8):
        periods.append(ejector.record_failure("http://a:1"))
        clock.advance(periods[-1])
    assert periods == [1, 2, 4, 8, 16, 30, 30, 30]


def test_a_retry_after_ejects_for_at_least_that_long() -> None:
    clock = FakeClock()
    ejector = OutlierEjector(base_seconds=1, max_seconds=30, clock=clock)
    a, b, _ = POOL
    assert ejector.record_failure(a, at_least=120) == 120  # past max_seconds: the server asked
    clock.advance(100)
    assert ejector.is_ejected(a)
    assert ejector.record_failure(b) == 1
    assert ejector.record_failure(b, at_least=5) == 5  # while ejected: lengthened to it
    assert ejector.record_failure(b, at_least=0.5) == 5  # never shortened
    assert ejector.failures(b) == 1  # one failure, however many answers said so
    clock.advance(20.5)
    assert not ejector.is_ejected(a) and not ejector.is_ejected(b)
    assert ejector.record_failure(b, at_least=0.5) == 2  # the backoff when it is longer


def test_success_while_ejected_does_not_readmit() -> None:
    clock = FakeClock()
    ejector = OutlierEjector(clock=clock)
    ejector.record_failure(POOL[0])
    ejector.record_success(POOL[0])  # a call that started before the failure
    assert ejector.is_ejected(POOL[0])


def test_panic_mode_when_all_ejected() -> None:
    clock = FakeClock()
    ejector = OutlierEjector(clock=clock)
    for i in POOL:
        ejector.record_failure(i)
    assert ejector.available(POOL) == POOL
    strict = OutlierEjector(clock=clock, panic=False)
    strict.record_failure(POOL[0])
    assert strict.available(POOL[:1]) == []


def test_forget_and_retain() -> None:
    clock = FakeClock()
    ejector = OutlierEjector(clock=clock)
    ejector.record_failure(POOL[0])
    ejector.record_failure(POOL[1])
    ejector.forget(POOL[0])  # e.g. it re-registered after a restart
    assert not ejector.is_ejected(POOL[0])
    ejector.retain([POOL[0], POOL[2]])  # b left the registry
    assert not ejector.is_ejected(POOL[1])


def test_ejector_and_selector_together() -> None:
    clock = FakeClock()
    ejector = OutlierEjector(clock=clock)
    selector = make_selector("round_robin")
    ejector.record_failure(POOL[1])
    picks = Counter(selector.select(ejector.available(POOL)).instance_id for _ in range(100))
    assert picks == {"a": 50, "c": 50}
    clock.advance(1.0)
    picks = Counter(selector.select(ejector.available(POOL)).instance_id for _ in range(99))
    assert picks == {"a": 33, "b": 33, "c": 33}


def test_invalid_ejector_settings() -> None:
    with pytest.raises(ValueError):
        OutlierEjector(base_seconds=0)
    with pytest.raises(ValueError):
        OutlierEjector(base_seconds=5, max_seconds=1)
