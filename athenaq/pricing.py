"""What Athena charges for a query: its price for the bytes it scanned.

Athena (SQL, billed per query) charges a price per TB of data scanned, "rounded up to
the nearest megabyte, with a 10 MB minimum per query"; a failed query and a DDL
statement (which scans nothing) are not charged, a cancelled one is charged for what it
scanned before it stopped. The units are binary here: a megabyte is 2**20 bytes and a
terabyte 2**40, as the contract's "rounded up to the MiB" says (docs/api.md#cost-and-usage
gives the formula and its sources). The store's usage aggregate bills each query the same
way in SQL (store/listing.py); this module is the one definition of the numbers.
"""

from __future__ import annotations

MIB = 2**20
TB = 2**40
# Athena bills at least this much of any query that scanned something.
MINIMUM_MIB = 10
DEFAULT_PRICE_PER_TB_USD = 5.0


def billed_mib(scanned_bytes: int, *, failed: bool = False) -> int:
    """The MiB Athena bills for a query that scanned `scanned_bytes`: rounded up to the
    MiB, at least MINIMUM_MIB; none for a failed query or one that scanned nothing."""
    if failed or scanned_bytes <= 0:
        return 0
    return max(MINIMUM_MIB, -(-scanned_bytes // MIB))


def cost_of(mib: int, price_per_tb_usd: float) -> float:
    """The price of `mib` billed MiB, in USD."""
    return price_per_tb_usd * mib / (TB // MIB)


def cost_usd(scanned_bytes: int | None, *, failed: bool, price_per_tb_usd: float) -> float | None:
    """A query's cost in USD: 0 when it failed or scanned nothing, None while its bytes
    scanned are not known (not finished, or refreshed)."""
    if failed:
        return 0.0
    if scanned_bytes is None:
        return None
    return cost_of(billed_mib(scanned_bytes), price_per_tb_usd)
