"""Queue ids: short, sortable by creation time, unique across processes writing one queue."""

from __future__ import annotations

import secrets

_ID_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXZ"  # no vowels: ids never spell words
_last_id_time = [0, 0]  # milliseconds, sequence: ids made in one millisecond stay distinct


def new_message_id(now: float) -> str:
    """14 characters: the millisecond, a per-process sequence within it, then 16 random
    bits (for other processes writing the same queue). Sortable by creation time."""
    millis = int(now * 1000)
    if millis <= _last_id_time[0]:
        millis = _last_id_time[0]
        _last_id_time[1] += 1
        if _last_id_time[1] >= 1 << 10:  # 1,024 in one millisecond: borrow the next one
            millis += 1
            _last_id_time[1] = 0
    else:
        _last_id_time[1] = 0
    _last_id_time[0] = millis
    number = (((millis << 10) | _last_id_time[1]) << 16) | secrets.randbits(16)
    chars = []
    for _ in range(14):
        number, digit = divmod(number, len(_ID_ALPHABET))
        chars.append(_ID_ALPHABET[digit])
    return "".join(reversed(chars))


def new_lease_token() -> str:
    """Proves a lease is still its holder's: an outcome with a stale token is ignored."""
    return secrets.token_hex(8)
