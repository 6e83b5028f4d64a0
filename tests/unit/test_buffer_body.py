"""The zero-copy request body the S3 client streams large buffers from."""

from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st

from adapters.store import BufferBody


@given(st.binary(max_size=4096), st.lists(st.integers(min_value=-1, max_value=700), max_size=12))
def test_reads_in_any_sizes_give_back_the_buffer_exactly(data: bytes, sizes: list[int]) -> None:
    body = BufferBody(bytearray(data))
    got = b"".join(body.read(n) for n in sizes) + body.read()
    assert got == data
    assert body.read(10) == b""


def test_seek_and_tell_let_a_retry_send_the_body_again() -> None:
    body = BufferBody(bytearray(b"0123456789"))
    assert body.read(4) == b"0123"
    assert body.tell() == 4
    assert body.seek(0) == 0
    assert body.read() == b"0123456789"
    assert body.seek(-3, io.SEEK_END) == 7
    assert body.read() == b"789"
    assert body.seek(-2, io.SEEK_CUR) == 8
    assert body.read(1) == b"8"


def test_the_buffer_is_not_copied() -> None:
    buffer = bytearray(b"abc")
    body = BufferBody(buffer)
    buffer[0:1] = b"x"
    assert body.read() == b"xbc"
