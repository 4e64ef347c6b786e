"""Read rows out of whatever the user passed: a HF ``Dataset``, an ``IterableDataset`` or a list of dicts.

``datasets`` is never imported here: the containers are recognised by what they offer
(``column_names`` and batched ``iter``), so the data layer works without the package installed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Rows are read from Arrow this many at a time: one Python dict per row is the slow part, and
# batches let Arrow decode only the columns we use.
_READ_BATCH = 1024


@dataclass(frozen=True)
class RowSource:
    """The rows of a dataset, ready to be read once or more.

    Attributes:
        column_names: the dataset's columns (for a list of dicts, every key any row has).
        num_rows: number of rows.
    """

    column_names: tuple[str, ...]
    num_rows: int
    _dataset: Any

    def iter_rows(self, columns: Sequence[str]) -> Iterator[dict[str, Any]]:
        """Yield each row as ``{column: value}`` for ``columns`` only, in dataset order.

        A column missing from a row reads as ``None`` (the callers report it with the row index).
        """
        if _is_arrow_table(self._dataset):
            table = self._dataset.select_columns(list(columns))
            for batch in table.iter(batch_size=_READ_BATCH):
                for values in zip(*(batch[column] for column in columns), strict=True):
                    yield dict(zip(columns, values, strict=True))
            return
        for row in self._dataset:
            yield {column: row.get(column) for column in columns}


def open_rows(dataset: Any) -> RowSource:
    """Wrap ``dataset`` for reading.

    An ``IterableDataset`` (or any other iterable of mappings) is read into memory here, once.

    Raises:
        TypeError: ``dataset`` is not one of the accepted containers, or a row is not a mapping.
        ValueError: the dataset has no rows.
    """
    if _is_arrow_table(dataset):
        source = RowSource(tuple(dataset.column_names), len(dataset), dataset)
    else:
        if isinstance(dataset, (str, bytes, Mapping)) or not isinstance(dataset, Iterable):
            raise TypeError(
                "expected a datasets.Dataset, a datasets.IterableDataset or a list of dicts, "
                f"got {type(dataset).__name__}"
            )
        rows = list(dataset)
        for index, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise TypeError(f"row {index} is a {type(row).__name__}, not a mapping of column -> value")
        declared = getattr(dataset, "column_names", None)  # IterableDataset: None when features are unknown
        # Union of the rows' keys, in first-seen order: rows of a plain list need not all have every key.
        columns = tuple(declared) if declared else tuple(dict.fromkeys(key for row in rows for key in row))
        source = RowSource(columns, len(rows), rows)
    if source.num_rows == 0:
        raise ValueError(f"the dataset is empty (0 rows; columns {list(source.column_names)})")
    return source


def _is_arrow_table(dataset: Any) -> bool:
    """A map-style ``datasets.Dataset``: has a length, columns and batched column-wise iteration."""
    return all(hasattr(dataset, name) for name in ("column_names", "select_columns", "iter", "__len__"))
