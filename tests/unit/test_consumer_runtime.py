"""The projector's interpreter settings: set inside, restored after, collection on a timer."""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Iterator

import pytest

from factflow_lineage.consumer._runtime import ProjectorRuntime, RuntimeSettings

SETTINGS = RuntimeSettings(gc_interval=30.0, switch_interval=0.0005)


@pytest.fixture(autouse=True)
def interpreter() -> Iterator[None]:
    was_enabled, was_switch = gc.isenabled(), sys.getswitchinterval()
    gc.enable()
    sys.setswitchinterval(0.005)
    yield
    (gc.enable if was_enabled else gc.disable)()
    sys.setswitchinterval(was_switch)


def test_set_inside_and_put_back_after() -> None:
    with ProjectorRuntime(SETTINGS):
        assert not gc.isenabled()
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    assert gc.isenabled()
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_put_back_after_an_exception() -> None:
    with pytest.raises(RuntimeError), ProjectorRuntime(SETTINGS):
        raise RuntimeError("boom")
    assert gc.isenabled()
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_overlapping_users_put_it_back_only_when_the_last_leaves() -> None:
    first, second = ProjectorRuntime(SETTINGS), ProjectorRuntime(SETTINGS)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not gc.isenabled()  # the second projector still runs
    assert sys.getswitchinterval() == pytest.approx(0.0005)
    second.__exit__(None, None, None)
    assert gc.isenabled()
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_a_process_that_had_collection_off_keeps_it_off() -> None:
    gc.disable()
    with ProjectorRuntime(SETTINGS):
        pass
    assert not gc.isenabled()


def test_none_leaves_the_interpreter_alone() -> None:
    with ProjectorRuntime(RuntimeSettings(gc_interval=None, switch_interval=None)) as runtime:
        assert gc.isenabled()
        assert sys.getswitchinterval() == pytest.approx(0.005)
        runtime.between_batches()
        assert runtime.collections == 0
    assert gc.isenabled()


def test_cycles_are_collected_once_the_interval_has_passed() -> None:
    class Node:
        other: object

    with ProjectorRuntime(RuntimeSettings(gc_interval=0.05)) as runtime:
        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
        runtime.between_batches()  # too early: nothing collected
        assert runtime.collections == 0
        assert sum(1 for o in gc.get_objects() if type(o) is Node) == 2
        time.sleep(0.06)
        runtime.between_batches()
        assert runtime.collections == 1
        assert not any(type(o) is Node for o in gc.get_objects())
