"""The projector's garbage-collection schedule: off inside, restored after, collected on a timer."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator

import pytest

from factflow_lineage.consumer._gc import ScheduledCollection


@pytest.fixture(autouse=True)
def gc_enabled() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def test_automatic_collection_is_off_inside_and_back_on_after() -> None:
    with ScheduledCollection(30.0):
        assert not gc.isenabled()
    assert gc.isenabled()


def test_it_is_back_on_after_an_exception() -> None:
    with pytest.raises(RuntimeError), ScheduledCollection(30.0):
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_overlapping_users_switch_it_back_on_only_when_the_last_leaves() -> None:
    first, second = ScheduledCollection(30.0), ScheduledCollection(30.0)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not gc.isenabled()  # the second projector still runs
    second.__exit__(None, None, None)
    assert gc.isenabled()


def test_a_process_that_had_it_off_keeps_it_off() -> None:
    gc.disable()
    with ScheduledCollection(30.0):
        pass
    assert not gc.isenabled()


def test_none_leaves_python_alone() -> None:
    with ScheduledCollection(None) as collection:
        assert gc.isenabled()
        collection.between_batches()
        assert collection.collections == 0
    assert gc.isenabled()


def test_cycles_are_collected_once_the_interval_has_passed() -> None:
    class Node:
        other: object

    with ScheduledCollection(0.05) as collection:
        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
        collection.between_batches()  # too early: nothing collected
        assert collection.collections == 0
        time.sleep(0.06)
        before = sum(1 for o in gc.get_objects() if type(o) is Node)
        assert before == 2
        collection.between_batches()
        assert collection.collections == 1
        assert not any(type(o) is Node for o in gc.get_objects())
