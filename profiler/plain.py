"""Records (frozen dataclasses) to and from plain JSON data, by msgspec.

:func:`to_plain` gives a record's fields, nested records included, as the dicts,
lists, strings and numbers ``json.loads`` gives for what ``json.dumps`` writes
(NaN stays NaN). :func:`from_plain` reads them back: nested records, tuples and
``X | None`` fields converted, keys the type does not have (figures written for
readers only) ignored, numbers coerced as ``int()`` and ``float()`` would, and
``__post_init__`` checks run; a bad value is a ``ValueError`` naming where it is
(``at `$.blocks[0].latency```).
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

T = TypeVar("T")


def _base_type(obj: Any) -> Any:
    """Subclasses of str, int and float (torch.__version__, numpy.float64) are written as
    their base type, as json.dumps writes them."""
    for base in (str, int, float):
        if isinstance(obj, base):
            return base(obj)
    raise TypeError(f"{type(obj).__name__} is not plain data")


# Through MessagePack rather than msgspec.to_builtins: that keeps tuples as tuples, and
# JSON (msgspec.json) has no NaN. A round trip costs about 20 us for a prune report.
_ENCODER = msgspec.msgpack.Encoder(enc_hook=_base_type)
_DECODER = msgspec.msgpack.Decoder()


def to_plain(record: Any) -> Any:
    return _DECODER.decode(_ENCODER.encode(record))


def from_plain(cls: type[T], data: Any) -> T:
    return msgspec.convert(data, cls, strict=False)


def check_version(what: str, found: Any, current: int, hint: str = "") -> None:
    """Refuse a record written by another prunerd (``what``: e.g. "plan version")."""
    if found != current:
        raise ValueError(f"{what} {found} is not supported (this prunerd reads {current}){hint}")
