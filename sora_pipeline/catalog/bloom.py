"""Parquet split-block Bloom filters (the format's SBBF), read straight from a file: which row groups may hold
any of a set of strings. pyarrow writes these filters (`bloom_filter_options`) but its dataset scanner does not
use them, so the catalog's item_id uniqueness check reads them here to skip row groups that cannot hold a day's
ids. Spec: https://github.com/apache/parquet-format/blob/master/BloomFilter.md (XXH64 of the plain value, seed 0;
32-byte blocks of eight 32-bit words; one bit per word chosen by a salted multiply)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import xxhash

SALT = np.array([0x47B6137B, 0x44974D91, 0x8824AD5B, 0xA2B7289D, 0x705495C7, 0x2DF1424B, 0x9EFC4947, 0x5C6BFB31],
                dtype=np.uint32)
_STRUCT, _I32 = 12, 5  # the Thrift compact types the filter header uses


def hashes(values: Iterable[str]) -> np.ndarray:
    """XXH64 (seed 0) of each string's UTF-8 bytes: a BYTE_ARRAY value as Parquet's Bloom filter hashes it."""
    return np.fromiter((xxhash.xxh64_intdigest(v.encode()) for v in values), dtype=np.uint64)


def parse_filter(data) -> np.ndarray:
    """The bitset of one serialized filter (Thrift compact header, then the blocks) as an (n, 8) uint32 array.
    `data` is any buffer (bytes, memoryview, a memory-mapped range): the array is a view of it, not a copy."""
    num_bytes, pos = _header(data)
    return _bitset(data, num_bytes, pos)


def _bitset(data, num_bytes: int, pos: int) -> np.ndarray:
    if num_bytes <= 0 or num_bytes % 32 or pos + num_bytes > len(data):
        raise ValueError(f"not a split-block Bloom filter ({num_bytes} bytes of bitset, {len(data) - pos} there)")
    return np.frombuffer(data, dtype="<u4", count=num_bytes // 4, offset=pos).reshape(-1, 8)


class Probe:
    """A set of hashes to test against many filters: the salted bit masks are computed once."""

    def __init__(self, h: np.ndarray) -> None:
        self.h = h
        key = (h & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        self.masks = np.uint32(1) << ((key[:, None] * SALT[None, :]) >> np.uint32(27))  # uint32 wraps, per spec
        # words 2j and 2j+1 of a block tested together as one little-endian 64-bit word
        self._pairs = self.masks.astype("<u4").view("<u8")  # (hashes, 4)
        self._pair0 = np.ascontiguousarray(self._pairs[:, 0])
        self._first: dict[int, np.ndarray] = {}

    def may_contain(self, blocks: np.ndarray) -> np.ndarray:
        """Per hash: False = certainly not in the filtered column chunk; True = maybe (or a false positive)."""
        return np.all((blocks[self._block_index(len(blocks))] & self.masks) != 0, axis=1)

    def any_in(self, blocks: np.ndarray) -> bool:
        return self.any_in_each([blocks])[0]

    def any_in_each(self, filters: Sequence[np.ndarray]) -> list[bool]:
        """Per filter: whether any hash may be in it. The first two words of each hash's block, read as one
        64-bit word, rule out ~97% of the hashes; the other six words are read for the rest. Filter by filter,
        so that every temporary stays small (~10 numpy calls, ~30 µs, per filter of 5,000 hashes)."""
        answer = []
        rest_cols = np.arange(1, 4)
        for blocks in filters:
            pairs = blocks.reshape(-1).view("<u8")
            first = self._first.get(len(blocks))
            if first is None:
                first = self._first[len(blocks)] = self._block_index(len(blocks)) * 4  # its first 64-bit word
            words = np.take(pairs, first)
            words &= self._pair0
            maybe = np.flatnonzero(words == self._pair0)
            if maybe.size:
                wanted = self._pairs[maybe, 1:]
                rest = np.take(pairs, first[maybe][:, None] + rest_cols)
                answer.append(bool(((rest & wanted) == wanted).all(axis=1).any()))
            else:
                answer.append(False)
        return answer

    def _block_index(self, n: int) -> np.ndarray:
        return (((self.h >> np.uint64(32)) * np.uint64(n)) >> np.uint64(32)).astype(np.intp)


def row_groups_that_may_contain(read_range, chunks: Sequence[tuple[int, int | None, int | None]],
                                probe: Probe, gap: int = 1 << 16) -> list[int] | None:
    """Of `chunks` — (row group, filter offset, filter length) of one column per row group of a file — the row
    groups whose filter may hold any of the probe's hashes. `read_range(offset, length)` returns a buffer of the
    file; filters at most `gap` bytes apart (pyarrow writes them back to back) are read as one range. None when
    a row group has no filter (the caller must scan everything)."""
    if any(offset is None or not length for _, offset, length in chunks):
        return None
    spans: list[tuple[int, int, list]] = []  # (start, end, chunks) of each range read
    for chunk in sorted(chunks, key=lambda c: c[1]):
        _, offset, length = chunk
        if spans and offset <= spans[-1][1] + gap:
            start, end, members = spans[-1]
            spans[-1] = (start, max(end, offset + length), members)
            members.append(chunk)
        else:
            spans.append((offset, offset + length, [chunk]))
    filters, groups = [], []
    header: tuple[bytes, int, int] | None = None  # the last header's bytes, numBytes, bitset start
    for start, end, members in spans:
        data = memoryview(read_range(start, end - start)).cast("B")  # (pyarrow buffers export signed bytes)
        for group, offset, length in members:
            piece = data[offset - start:offset - start + length]
            if header is None or piece[:len(header[0])] != header[0]:  # filters of one size share a header
                num_bytes, pos = _header(piece)
                header = (bytes(piece[:pos]), num_bytes, pos)
            filters.append(_bitset(piece, header[1], header[2]))
            groups.append(group)
    return [group for group, hit in zip(groups, probe.any_in_each(filters)) if hit]


def _header(data: bytes) -> tuple[int, int]:
    """numBytes (field 1) of the BloomFilterHeader struct and where the bitset starts."""
    num_bytes, pos, depth, last = -1, 0, 1, [0]
    while depth:
        byte = data[pos]
        pos += 1
        if byte == 0:  # end of a struct
            depth -= 1
            last.pop()
            continue
        delta, kind = byte >> 4, byte & 0x0F
        if delta == 0:
            raise ValueError("unexpected long-form field header in a Bloom filter header")
        field = last[-1] + delta
        last[-1] = field
        if kind == _I32:
            value, pos = _varint(data, pos)
            if depth == 1 and field == 1:
                num_bytes = (value >> 1) ^ -(value & 1)  # zigzag
        elif kind == _STRUCT:
            depth += 1
            last.append(0)
        else:
            raise ValueError(f"unexpected Thrift type {kind} in a Bloom filter header")
    return num_bytes, pos


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
