"""Reading request bodies within the configured byte limit, gzip/deflate included."""

from __future__ import annotations

import zlib

from starlette.requests import Request

from service.errors import BadRequest, GatewayError, PayloadTooLarge

WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class UnsupportedEncoding(GatewayError):
    status = 415


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is over the limit of {limit} bytes")


async def _read_raw(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
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
    decompressor = zlib.decompressobj(WBITS[encoding])
    try:
        plain = decompressor.decompress(data, limit + 1)
    except zlib.error as error:
        raise BadRequest(f"body is not valid {encoding}: {error}") from None
    if len(plain) > limit:
        raise PayloadTooLarge(f"decompressed body is over the limit of {limit} bytes")
    if not decompressor.eof:
        raise BadRequest(f"{encoding} body is truncated")
    return plain


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, decompressed; ``PayloadTooLarge`` past ``limit`` bytes either way."""
    data = await _read_raw(request, limit)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return data
    if encoding not in WBITS:
        raise UnsupportedEncoding(f"Content-Encoding {encoding!r} is not supported (gzip, deflate)")
    return _decompress(data, encoding, limit)
