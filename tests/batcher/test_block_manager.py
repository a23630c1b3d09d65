"""Block manager: allocation, extension, sharing and the integrity check (pure Python)."""

import random

import pytest

from inflight_batcher.block_manager import BlockManager, NoFreeBlocksError, blocks_for


def test_blocks_for():
    assert [blocks_for(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


def test_allocate_extend_free():
    bm = BlockManager(8, 4)
    t: list[int] = []
    assert bm.extend(t, 5) == t and len(t) == 2  # positions 0..4 -> 2 blocks
    assert bm.extend(t, 8) == [] and len(t) == 2  # still fits
    bm.extend(t, 9)
    assert len(t) == 3 and bm.num_free == 5 and bm.num_used == 3
    bm.check([t])
    bm.free(t)
    assert t == [] and bm.num_free == 8
    bm.check([])


def test_exhaustion_raises_and_leaves_state_intact():
    bm = BlockManager(3, 4)
    t = bm.allocate(3)
    with pytest.raises(NoFreeBlocksError):
        bm.allocate(1)
    bm.check([t])


def test_fork_shares_until_last_reference():
    bm = BlockManager(6, 4)
    a = bm.allocate(2)
    b = bm.fork(a)
    assert a == b and all(bm.ref_counts[x] == 2 for x in a)
    bm.check([a, b])
    bm.free(a)
    assert bm.num_free == 4  # b still holds them
    bm.check([b])
    bm.free(b)
    assert bm.num_free == 6
    bm.check([])


def test_check_catches_corruption():
    bm = BlockManager(4, 4)
    t = bm.allocate(1)
    with pytest.raises(AssertionError):
        bm.check([])  # a live block nobody claims
    bm.ref_counts[t[0]] = 0  # a leak: ref count 0 but not in the free queue
    with pytest.raises(AssertionError):
        bm.check()


def test_double_free_is_caught():
    bm = BlockManager(4, 4)
    t = bm.allocate(1)
    copy = list(t)
    bm.free(t)
    with pytest.raises(AssertionError):
        bm.free(copy)


def test_random_churn_keeps_invariants():
    rng = random.Random(0)
    bm = BlockManager(64, 8)
    tables: list[list[int]] = []
    for _ in range(2000):
        op = rng.random()
        if op < 0.4:
            t: list[int] = []
            n = rng.randint(1, 40)
            if bm.blocks_to_extend(t, n) <= bm.num_free:
                bm.extend(t, n)
                tables.append(t)
        elif op < 0.6 and tables:
            t = rng.choice(tables)
            n = len(t) * 8 + rng.randint(1, 16)
            if bm.blocks_to_extend(t, n) <= bm.num_free:
                bm.extend(t, n)
        elif op < 0.75 and tables:
            tables.append(bm.fork(rng.choice(tables)))
        elif tables:
            bm.free(tables.pop(rng.randrange(len(tables))))
        bm.check(tables)
    for t in tables:
        bm.free(t)
    bm.check([])
    assert bm.num_free == 64
