"""Wire layer: the CBOR codec of frozen message dataclasses and peer ids.

Never pickle: everything that crosses the network or the disk goes through
:func:`encode` / :func:`decode`.
"""

from ._codec import (
    DEFAULT_MAX_MESSAGE,
    WIRE_VERSION,
    ArraySpec,
    MaxLen,
    Range,
    decode,
    decode_as,
    encode,
    encoded_size,
    message,
    registered_messages,
)
from ._peer_id import PEER_ID_BYTES, PeerId

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "PEER_ID_BYTES",
    "WIRE_VERSION",
    "ArraySpec",
    "MaxLen",
    "PeerId",
    "Range",
    "decode",
    "decode_as",
    "encode",
    "encoded_size",
    "message",
    "registered_messages",
]
