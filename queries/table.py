"""Reading a query table: plain text (one query per line) or parquet with a `query` column.

`openwit queries` writes parquet tables with more columns (id, source, statistic); `openwit
build` only needs the strings, in a stable order.
"""

from __future__ import annotations

import io
import unicodedata

import pyarrow.parquet as pq

from pipeline import storage

QUERY_COLUMN = "query"


def load_query_strings(path: str) -> list[str]:
    """The table's distinct, non-blank queries (NFC-normalised, stripped), first occurrence first."""
    data = storage.read_bytes(path)
    if path.endswith(".parquet"):
        table = pq.read_table(io.BytesIO(data), columns=[QUERY_COLUMN])
        raw = table.column(QUERY_COLUMN).to_pylist()
    else:
        raw = data.decode("utf-8").splitlines()
    seen: dict[str, None] = {}
    for query in raw:
        if query is None:
            continue
        query = unicodedata.normalize("NFC", query).strip()
        if query:
            seen.setdefault(query, None)
    return list(seen)
