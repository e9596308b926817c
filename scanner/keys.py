"""What identifies a target across runs: one key for `--resume`, `--shard` and `merge`.

A key is 8 bytes of BLAKE2b over the target's line, host, port and the SNI it sends (and,
under --all-addresses, for --resume only, its address), so it depends on nothing but the
target: not the Python version, the machine, or where the line sits in the list. A record
carries the same fields, so a record's key is its target's (`record_key`).

`--shard I/N` takes the targets whose key is I modulo N: every expanded target (an address
of a CIDR line, a port of --ports, a server name) is placed on its own, so one huge line
spreads over every shard, and a line given twice lands twice in the same shard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import AsyncIterable, AsyncIterator

from .record import sent_sni
from .targets import BadLine, Target
from .values import Shard


def record_key(target: str, host: str | None, port: int | None, sni: str | None = None,
               ip: str | None = None) -> int:
    """The key of a record's target, from the record's own fields (a million fit in
    ~100 MB as ints): its line, host and port, the SNI it sent (one line may name several
    servers) and, for --resume under --all-addresses only, the address (one name gives a
    record per address)."""
    text = json.dumps([target, host, port, sni, ip], ensure_ascii=True)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def item_key(item: Target | BadLine, *, by_address: bool = False) -> int:
    """The key the record of `item` will have."""
    if isinstance(item, BadLine):
        return record_key(item.text, None, None)
    return record_key(item.text, item.host, item.port, sent_sni(item.sni),
                      item.ip if by_address else None)


def parse_shard(text: str) -> Shard:
    """"I/N" -> Shard(I, N), or ValueError saying what is wrong."""
    index, slash, count = text.partition("/")
    if not (slash and index.isascii() and index.isdigit() and count.isascii()
            and count.isdigit()):
        raise ValueError(f"expected INDEX/COUNT such as 0/8, got {text!r}")
    return Shard(int(index), int(count))


def shard_of(item: Target | BadLine, count: int) -> int:
    """Which of `count` shards `item` belongs to."""
    return item_key(item) % count


async def select(items: AsyncIterable[Target | BadLine],
                 shard: Shard) -> AsyncIterator[Target | BadLine]:
    """The items of `shard`, each marked with it (its record names the shard)."""
    async for item in items:
        if item_key(item) % shard.count == shard.index:
            yield dataclasses.replace(item, shard=shard)
