"""Identity keys, key files, signatures and envelopes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from p2pfl.errors import ConfigError, RemoteProtocolError
from p2pfl.identity import Identity, Signed, atomic_write, open_signed, seal, verify_signature
from p2pfl.wire import PeerId, decode, encode


def test_peer_id_is_blake2b_160_of_the_public_key() -> None:
    import hashlib

    ident = Identity.from_seed(b"\x07" * 32)
    assert ident.peer_id.raw == hashlib.blake2b(ident.public_key, digest_size=20).digest()
    assert Identity.from_seed(b"\x07" * 32).peer_id == ident.peer_id
    assert Identity.generate().peer_id != ident.peer_id


def test_signatures_are_domain_separated() -> None:
    ident = Identity.from_seed(b"\x01" * 32)
    sig = ident.sign(b"handshake", b"data")
    assert verify_signature(ident.public_key, b"handshake", b"data", sig)
    assert not verify_signature(ident.public_key, b"broadcast", b"data", sig)
    assert not verify_signature(ident.public_key, b"handshake", b"datA", sig)
    other = Identity.from_seed(b"\x02" * 32)
    assert not verify_signature(other.public_key, b"handshake", b"data", sig)
    assert not verify_signature(b"short", b"handshake", b"data", sig)
    assert not verify_signature(ident.public_key, b"handshake", b"data", sig[:10])


def test_key_file_round_trip_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "peer.key"
    ident = Identity.generate()
    ident.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Identity.load(path).peer_id == ident.peer_id
    assert [p.name for p in path.parent.iterdir()] == ["peer.key"]  # no temp file left


def test_key_file_mode_ignores_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        Identity.generate().save(tmp_path / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "k"
    Identity.generate().save(path)
    with pytest.raises(ConfigError, match="already exists"):
        Identity.generate().save(path)


def test_refuses_key_file_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "k"
    Identity.generate().save(path)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"mode 0644.*chmod 600"):
        Identity.load(path)


@pytest.mark.parametrize("content", [b"", b"garbage", encode(Signed(b"a" * 32, b"", b"b" * 64))])
def test_refuses_malformed_key_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "k"
    atomic_write(path, content, mode=0o600)
    with pytest.raises(ConfigError, match="not a p2pfl key file"):
        Identity.load(path)


def test_missing_key_file_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="p2pfl keygen"):
        Identity.load(tmp_path / "nope")


def test_atomic_write_replaces_content(tmp_path: Path) -> None:
    path = tmp_path / "f"
    atomic_write(path, b"one")
    atomic_write(path, b"two")
    assert path.read_bytes() == b"two"
    assert len(list(tmp_path.iterdir())) == 1


def test_envelope_round_trip_and_tamper() -> None:
    ident = Identity.from_seed(b"\x03" * 32)
    inner = Signed(b"x" * 32, b"payload", b"y" * 64)  # any registered message will do
    env = seal(ident, inner, domain=b"test")
    env2 = decode(encode(env))
    signer, msg = open_signed(env2, domain=b"test", expect=Signed)
    assert signer == ident.peer_id and msg == inner
    with pytest.raises(RemoteProtocolError, match="bad signature"):
        open_signed(env, domain=b"other")
    forged = Signed(env.signer, env.body[:-1] + b"\x00", env.signature)
    with pytest.raises(RemoteProtocolError, match="bad signature"):
        open_signed(forged, domain=b"test")
    imposter = Identity.from_seed(b"\x04" * 32)
    swapped = Signed(imposter.public_key, env.body, env.signature)
    with pytest.raises(RemoteProtocolError, match="bad signature"):
        open_signed(swapped, domain=b"test")
    assert env.peer_id == PeerId.from_public_key(ident.public_key)


# -- the signature cache ---------------------------------------------------------------


def test_signature_cache_answers_repeats_and_never_a_changed_input() -> None:
    from p2pfl.identity import signature_cache

    ident = Identity.from_seed(b"\x05" * 32)
    other = Identity.from_seed(b"\x06" * 32)
    data = os.urandom(100)
    sig = ident.sign(b"cache-test", data)
    before = signature_cache.statistics()
    assert verify_signature(ident.public_key, b"cache-test", data, sig)
    assert verify_signature(ident.public_key, b"cache-test", data, sig)
    after = signature_cache.statistics()
    assert after.hits == before.hits + 1 and after.misses == before.misses + 1
    # every changed input is a miss and fails, however often the valid one was cached
    flipped = bytes([data[0] ^ 1]) + data[1:]
    bad_sig = bytes([sig[0] ^ 1]) + sig[1:]
    for _ in range(2):
        assert not verify_signature(ident.public_key, b"cache-test", flipped, sig)
        assert not verify_signature(ident.public_key, b"cache-tesT", data, sig)
        assert not verify_signature(ident.public_key, b"cache-test", data, bad_sig)
        assert not verify_signature(other.public_key, b"cache-test", data, sig)
        assert not verify_signature(ident.public_key, b"cache-test", data + b"\x00", sig)
        # domain and data are not confused by moving bytes between them
        assert not verify_signature(ident.public_key, b"cache-tes", b"t\x00" + data, sig)
    assert signature_cache.statistics().hits == after.hits  # failures are never cached


def test_signature_cache_is_bounded_and_can_be_off() -> None:
    from p2pfl.identity import SignatureCache

    cache = SignatureCache(capacity=3)
    keys = [SignatureCache.key(b"k" * 32, b"s" * 64, bytes([i])) for i in range(5)]
    assert len(set(keys)) == 5
    for k in keys:
        cache.add(k)
    assert cache.statistics().size == 3
    assert keys[0] not in cache and keys[1] not in cache and keys[4] in cache  # oldest out
    cache.resize(1)
    assert cache.statistics().size == 1 and keys[4] in cache
    cache.resize(0)
    cache.add(keys[0])
    assert not cache.enabled and cache.statistics().size == 0
    with pytest.raises(ValueError):
        cache.resize(-1)


def test_verify_signature_without_cache_still_verifies() -> None:
    from p2pfl.identity import signature_cache

    ident = Identity.from_seed(b"\x08" * 32)
    sig = ident.sign(b"d", b"x")
    cap = signature_cache.statistics().capacity
    signature_cache.resize(0)
    try:
        assert verify_signature(ident.public_key, b"d", b"x", sig)
        assert not verify_signature(ident.public_key, b"d", b"y", sig)
        assert signature_cache.statistics().size == 0
    finally:
        signature_cache.resize(cap)
