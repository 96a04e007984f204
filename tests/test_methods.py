"""Method configs: the official schedules and validation with fix-it messages."""

import pytest

import relcache
from relcache.caching.methods import fixed_schedule


@pytest.mark.parametrize(("interval", "nfc"), [(4, 14), (5, 11), (6, 10), (7, 8), (9, 7)])
def test_fixed_schedule_nfc_warmup2(interval: int, nfc: int) -> None:
    assert len(fixed_schedule(50, interval, 2)) == nfc
    assert len(relcache.TaylorSeer(interval=interval).schedule(50)) == nfc
    assert len(relcache.FORA(interval=interval).schedule(50)) == nfc


@pytest.mark.parametrize(("interval", "nfc"), [(4, 14), (9, 8)])
def test_fixed_schedule_nfc_warmup3(interval: int, nfc: int) -> None:
    assert len(fixed_schedule(50, interval, 3)) == nfc


def test_schedule_shape() -> None:
    assert fixed_schedule(14, 4, 2) == [0, 1, 5, 9, 13]
    assert 49 not in fixed_schedule(50, 5, 2)  # the last step is not forced full


def test_first_refresh_shifts_the_fixed_schedule() -> None:
    """first = W + 1 is diffusers' TaylorSeer hook: full if i < B or (i - B - 1) % N == 0."""
    diffusers_hook = [i for i in range(50) if i < 2 or (i - 2 - 1) % 4 == 0]
    assert fixed_schedule(50, 4, 2, first=3) == diffusers_hook
    assert relcache.TaylorSeer(interval=4, first=3).schedule(50) == diffusers_hook
    assert relcache.RFC(rcs=False, interval=4, first=3).schedule(50) == diffusers_hook
    assert relcache.FORA(interval=4, first=3).describe() == "FORA N=4 first 3"
    assert fixed_schedule(50, 4, 2, first=None) == fixed_schedule(50, 4, 2, first=1)  # official
    entry, knobs = relcache.caching.methods.parse_method("rfe2:clamp=1.05:first=3")
    for nfc in (14, 10, 7):
        assert len(entry.for_nfc(nfc, 50, **knobs)[0].schedule(50)) == nfc


def test_first_refresh_is_validated() -> None:
    with pytest.raises(ValueError, match="first= shifts"):
        relcache.TaylorSeer(full_steps=[0, 1, 5], first=3)
    with pytest.raises(ValueError, match="first must be a positive integer"):
        relcache.TaylorSeer(interval=4, first=0)
    with pytest.raises(ValueError, match="drop interval/full_steps/first"):
        relcache.RFC(threshold=0.5, first=3)


def test_explicit_schedule() -> None:
    cfg = relcache.TaylorSeer(full_steps=[0, 1, 5, 9])
    assert cfg.schedule(12) == [0, 1, 5, 9]
    assert relcache.RFC(rcs=False, full_steps=(0, 1, 3)).schedule(5) == [0, 1, 3]  # RFE: 0, 1


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: relcache.FORA(interval=0), "interval must be a positive integer"),
        (lambda: relcache.TaylorSeer(interval=-3), "interval must be a positive integer"),
        (lambda: relcache.TaylorSeer(order=-1), "order must be an integer >= 0"),
        (lambda: relcache.RFC(threshold=0.0), "threshold > 0"),
        (lambda: relcache.RFC(threshold=-1.0), "threshold > 0"),
        (lambda: relcache.RFC(threshold=0.5, warmup=1), "warmup must be >= 2"),
        (lambda: relcache.RFC(order=-1, threshold=0.5), "order must be an integer"),
        (lambda: relcache.RFC(rcs=False), "exactly one of interval"),
        (lambda: relcache.RFC(rcs=False, interval=0), "interval must be a positive"),
        (lambda: relcache.RFC(threshold=0.5, interval=4), "drop interval"),
        (lambda: relcache.TaylorSeer(full_steps=[1, 2]), "starting at 0"),
        (lambda: relcache.TaylorSeer(full_steps=[0, 3, 3]), "strictly increasing"),
    ],
)
def test_bad_configs_raise_with_fix(make, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        make()


def test_configs_are_frozen() -> None:
    cfg = relcache.RFC(threshold=0.5)
    with pytest.raises(AttributeError):
        cfg.threshold = 1.0  # type: ignore[misc]


def test_registry_lists_every_method() -> None:
    assert set(relcache.METHODS) == {
        "fora",
        "taylorseer",
        "rfc",
        "rfe",
        "rcs",
        "budget",
        "weighted",
        "rcsall",
    }
