"""Reading request bodies within the configured byte limit, gzip/deflate included.

Everything a client can do wrong with a body is a 4xx: a body over the limit (413), one that is
not valid gzip or deflate, is truncated or has bytes after its last gzip member (400), an unknown
encoding (415), and a client that goes away before its body is read (499, nginx's "client closed
request": counted as the client's doing, never as a server error).
"""

from __future__ import annotations

import zlib

from starlette.requests import ClientDisconnect, Request

from service.errors import BadRequest, ClientGone, PayloadTooLarge, UnsupportedEncoding

WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is over the limit of {limit} bytes")


async def _read_raw(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isascii() or not declared.isdigit():
            raise BadRequest("Content-Length must be a number")
        if int(declared) > limit:
            raise _too_large(limit)
        return await request.body()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _decompress(data: bytes, encoding: str, limit: int) -> bytes:
    """Every member of a gzip body (RFC 1952 allows several), at most ``limit`` bytes in all."""
    parts, size, rest = [], 0, data
    while True:
        decompressor = zlib.decompressobj(WBITS[encoding])
        try:
            plain = decompressor.decompress(rest, limit - size + 1)
        except zlib.error as error:
            raise BadRequest(f"body is not valid {encoding}: {error}") from None
        size += len(plain)
        if size > limit:
            raise PayloadTooLarge(f"decompressed body is over the limit of {limit} bytes")
        if not decompressor.eof:
            raise BadRequest(f"{encoding} body is truncated")
        parts.append(plain)
        rest = decompressor.unused_data
        if not rest:
            return b"".join(parts)
        if encoding != "gzip" or not rest.startswith(b"\x1f\x8b"):
            raise BadRequest(f"{len(rest)} bytes of junk after the {encoding} data")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, decompressed; ``PayloadTooLarge`` past ``limit`` bytes either way."""
    try:
        data = await _read_raw(request, limit)
    except ClientDisconnect:
        raise ClientGone("the client closed the connection before sending its whole body") from None
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return data
    if encoding not in WBITS:
        raise UnsupportedEncoding(f"Content-Encoding {encoding!r} is not supported (gzip, deflate)")
    return _decompress(data, encoding, limit)
