"""Reading a query table: plain text (one query per line), a JSON list of strings (MetaCLIP's
metadata.json), or parquet with a `query` column (what `openwit queries` writes).

A query's id is its position in the list this module returns. For `openwit queries` tables
(distinct queries, stored in `id` order) that is the table's own `id` column; for MetaCLIP's
metadata.json it is MetaCLIP's entry id.
"""

from __future__ import annotations

import io
import json
import unicodedata

import pyarrow.parquet as pq

from openwit.pipeline.core import storage

QUERY_COLUMN = "query"


def _raw_queries(path: str) -> list:
    data = storage.read_bytes(path)
    if path.endswith(".parquet"):
        table = pq.read_table(io.BytesIO(data), columns=[QUERY_COLUMN])
        return table.column(QUERY_COLUMN).to_pylist()
    if path.endswith(".json"):
        entries = json.loads(data.decode("utf-8"))
        if not isinstance(entries, list):
            raise ValueError(f"{path}: expected a JSON list of query strings")
        return entries
    return data.decode("utf-8").splitlines()


def load_query_strings(path: str, exact: bool = False) -> list[str]:
    """The table's queries in order.

    Default: distinct and non-blank, NFC-normalised and stripped, first occurrence first.
    `exact`: every entry as stored, duplicates included (MetaCLIP's ids are list positions).
    """
    raw = _raw_queries(path)
    if exact:
        return [str(query) for query in raw if query is not None]
    seen: dict[str, None] = {}
    for query in raw:
        if query is None:
            continue
        query = unicodedata.normalize("NFC", str(query)).strip()
        if query:
            seen.setdefault(query, None)
    return list(seen)
