"""Tests of X25519 agreement and XChaCha20-Poly1305 encryption."""

from __future__ import annotations

import nacl.bindings
import nacl.public
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpc import ka
from mpc.errors import DecryptionError
from mpc.rand import SeededRng

# Low-order points of Curve25519 (Bernstein's list): all give an all-zero DH output.
LOW_ORDER = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


def test_keypair_is_deterministic_and_matches_nacl() -> None:
    a = ka.KeyPair.generate(SeededRng(b"k"))
    b = ka.KeyPair.generate(SeededRng(b"k"))
    assert a == b
    assert a.public == bytes(nacl.public.PrivateKey(a.secret).public_key)
    assert ka.public_key(a.secret) == a.public
    assert a.secret.hex() not in repr(a)
    with pytest.raises(ValueError):
        ka.KeyPair.from_secret(b"short")


@given(st.binary(min_size=1, max_size=8), st.binary(max_size=40))
def test_agreement_is_symmetric(seed: bytes, context: bytes) -> None:
    rng = SeededRng(seed)
    u, v = ka.KeyPair.generate(rng), ka.KeyPair.generate(rng)
    k_uv = ka.agree(u.secret, v.public, context)
    assert k_uv == ka.agree(v.secret, u.public, context)
    assert len(k_uv) == 32
    assert k_uv != ka.agree(u.secret, v.public, context + b"x")


def test_agreement_binds_keys_and_matches_definition() -> None:
    import hashlib

    rng = SeededRng(b"bind")
    u, v, w = (ka.KeyPair.generate(rng) for _ in range(3))
    assert ka.agree(u.secret, v.public, b"c") != ka.agree(u.secret, w.public, b"c")
    dh = nacl.bindings.crypto_scalarmult(u.secret, v.public)
    lo, hi = sorted((u.public, v.public))
    h = hashlib.blake2b(key=dh, digest_size=32, person=b"mpc.ka.agree")
    h.update(lo + hi + (3).to_bytes(8, "big") + b"ctx")
    assert ka.agree(u.secret, v.public, b"ctx") == h.digest()


@pytest.mark.parametrize("point", LOW_ORDER)
def test_low_order_points_rejected(point: bytes) -> None:
    sk = ka.KeyPair.generate(SeededRng(b"lo")).secret
    with pytest.raises(ValueError):
        ka.agree(sk, point, b"c")


def test_agree_length_errors() -> None:
    kp = ka.KeyPair.generate(SeededRng(b"l"))
    with pytest.raises(ValueError):
        ka.agree(kp.secret[:31], kp.public, b"")
    with pytest.raises(ValueError):
        ka.agree(kp.secret, kp.public + b"\0", b"")


@given(st.binary(max_size=300), st.binary(max_size=40))
def test_encrypt_round_trip(plaintext: bytes, aad: bytes) -> None:
    key = bytes(range(32))
    ct = ka.encrypt(key, plaintext, aad, SeededRng(plaintext))
    assert len(ct) == len(plaintext) + ka.OVERHEAD
    assert ka.decrypt(key, ct, aad) == plaintext
    # libsodium oracle with the prepended nonce
    nonce = ct[: ka.NONCE_BYTES]
    assert ct[ka.NONCE_BYTES :] == nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        plaintext, aad, nonce, key
    )


def test_decrypt_failures() -> None:
    key = bytes(32)
    ct = ka.encrypt(key, b"share", b"aad", SeededRng(b"n"))
    for i in (0, ka.NONCE_BYTES, len(ct) - 1):
        bad = bytearray(ct)
        bad[i] ^= 1
        with pytest.raises(DecryptionError):
            ka.decrypt(key, bytes(bad), b"aad")
    with pytest.raises(DecryptionError):
        ka.decrypt(key, ct, b"other")
    with pytest.raises(DecryptionError):
        ka.decrypt(bytes([1]) * 32, ct, b"aad")
    with pytest.raises(DecryptionError):
        ka.decrypt(key, ct[: ka.OVERHEAD - 1], b"aad")
    with pytest.raises(ValueError):
        ka.encrypt(b"k", b"", b"", SeededRng(b""))
    # fresh nonces: two encryptions of the same message differ
    rng = SeededRng(b"twice")
    assert ka.encrypt(key, b"m", b"", rng) != ka.encrypt(key, b"m", b"", rng)
