"""Scoring, graylisting, token buckets and bounded caches (no network)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from p2pfl.overlay import Offense, Scoreboard, ScoreParams
from p2pfl.overlay._util import ExpiringSet, TokenBucket
from p2pfl.wire import PeerId

A = PeerId(b"a" * 20)
B = PeerId(b"b" * 20)


def test_one_invalid_message_is_cheap_a_habit_graylists() -> None:
    sb = Scoreboard(ScoreParams())
    assert not sb.penalize(A, Offense.INVALID, 0.0)
    assert sb.score(A, 0.0) == -10.0
    assert not sb.penalize(A, Offense.INVALID, 0.0)  # 2² * 10 = 40
    assert sb.penalize(A, Offense.INVALID, 0.0)  # 90 > 50: graylisted now
    assert sb.is_graylisted(A, 1.0)
    assert not sb.is_graylisted(B, 1.0)
    assert not sb.penalize(A, Offense.INVALID, 1.0)  # already graylisted: not "just"


def test_graylist_expires_and_penalties_decay() -> None:
    p = ScoreParams(graylist_duration=100.0, half_life=10.0)
    sb = Scoreboard(p)
    for _ in range(3):
        sb.penalize(A, Offense.MALFORMED, 0.0)
    assert sb.is_graylisted(A, 99.0)
    assert not sb.is_graylisted(A, 100.0)
    assert sb.score(A, 100.0) > -0.01  # 3 * 2^-10, squared


def test_rewards_are_capped_and_cannot_shield_a_habit() -> None:
    sb = Scoreboard(ScoreParams())
    for _ in range(10_000):
        sb.reward(A, 0.0)
    assert sb.score(A, 0.0) == ScoreParams().reward * ScoreParams().reward_cap
    graylisted = [sb.penalize(A, Offense.INVALID, 0.0) for _ in range(4)]
    assert any(graylisted)


def test_floods_count_linearly_with_a_short_half_life() -> None:
    sb = Scoreboard(ScoreParams())
    hits = [sb.penalize(A, Offense.FLOOD, 0.0) for _ in range(200)]
    assert hits.index(True) == 100  # 101 * 0.5 > 50
    sb2 = Scoreboard(ScoreParams())
    for t in range(200):  # one excess message per second decays away
        assert not sb2.penalize(B, Offense.FLOOD, float(t))


def test_scoreboard_is_bounded() -> None:
    sb = Scoreboard(ScoreParams(max_tracked=10))
    for i in range(100):
        sb.penalize(PeerId(i.to_bytes(20, "big")), Offense.FLOOD, 0.0)
    assert len(sb.snapshot(0.0)) == 10


def test_token_bucket() -> None:
    b = TokenBucket(rate=10.0, burst=5.0, now=0.0)
    assert [b.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert b.take(0.1)  # one token refilled
    assert not b.take(0.1)
    assert b.take(100.0, 5.0)  # refill never exceeds the burst
    assert not b.take(100.0)


@given(st.lists(st.tuples(st.integers(0, 50), st.floats(0, 1)), max_size=200))
def test_expiring_set_bounded_and_expires(ops: list[tuple[int, float]]) -> None:
    s: ExpiringSet[int] = ExpiringSet(ttl=5.0, maxlen=8)
    now = 0.0
    for key, dt in ops:
        now += dt
        s.add(key, now)
        s.expire(now)
        assert len(s) <= 8
        assert key in s
    s.expire(now + 5.0)
    assert len(s) == 0
