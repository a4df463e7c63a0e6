"""One bounds-checked reader and writer for every IKEv2 structure (aioquic's ``Buffer``).

All parsing goes through :class:`Reader`; running past the end raises
:class:`~ike_lite.errors.DecodeError`, never IndexError or struct.error.
"""

from __future__ import annotations

from ike_lite.errors import DecodeError


class Reader:
    """Sequential big-endian reader over ``data`` with a hard end."""

    __slots__ = ("_data", "_end", "pos")

    def __init__(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        self._data = data
        self.pos = start
        self._end = len(data) if end is None else end
        if not 0 <= start <= self._end <= len(data):
            raise DecodeError("reader bounds outside the data")

    @property
    def remaining(self) -> int:
        return self._end - self.pos

    def eof(self) -> bool:
        return self.pos >= self._end

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self._end:
            raise DecodeError(f"truncated: need {n} bytes at offset {self.pos}, have {self.remaining}")
        out = self._data[self.pos : self.pos + n]
        self.pos += n
        return out

    def rest(self) -> bytes:
        return self.take(self.remaining)

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def u8(self) -> int:
        return self.uint(1)

    def u16(self) -> int:
        return self.uint(2)

    def u32(self) -> int:
        return self.uint(4)

    def sub(self, n: int) -> Reader:
        """A reader over the next ``n`` bytes; this reader skips past them."""
        if n < 0 or self.pos + n > self._end:
            raise DecodeError(
                f"truncated: structure of {n} bytes at offset {self.pos}, have {self.remaining}"
            )
        sub = Reader(self._data, self.pos, self.pos + n)
        self.pos += n
        return sub


class Writer:
    """Append-only big-endian writer."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def __len__(self) -> int:
        return len(self._buf)

    def put(self, data: bytes) -> Writer:
        self._buf += data
        return self

    def uint(self, value: int, size: int) -> Writer:
        if not 0 <= value < 1 << (8 * size):
            raise ValueError(f"{value} does not fit in {size} bytes")
        self._buf += value.to_bytes(size, "big")
        return self

    def u8(self, value: int) -> Writer:
        return self.uint(value, 1)

    def u16(self, value: int) -> Writer:
        return self.uint(value, 2)

    def u32(self, value: int) -> Writer:
        return self.uint(value, 4)

    def getvalue(self) -> bytes:
        return bytes(self._buf)
