"""Rows to and from Arrow tables of exactly ``schema.ARROW_SCHEMA``.

Writing is strict: a column the schema does not declare is a bug in the harness, not data. Reading
conforms whatever a row file holds, including files written before the schema (columns typed
``null``, ``large_string``, a float ``finished_at``, ISO text ``env_time_utc``, ``host``/``device_index``,
``timer`` and ``cuda_graph``): renamed, cast, and missing columns added as nulls.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

import pandas as pd
import pyarrow as pa

from attnbench.harness.results import schema

# Old name -> the schema's name for the same value.
_RENAMED = {"host": "env_host", "device_index": "env_device_index"}
_PANDAS_TYPES = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}


class ColumnTypeError(TypeError):
    """A row file's column holds values of another type than ``attnbench.harness.results.schema`` declares."""


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def _cell(column: schema.Column, value: Any) -> Any:
    """``value`` as the Python object Arrow stores for ``column``'s kind; None for missing."""
    kind = column.kind
    if kind == "list<float64>":
        return None if value is None or value is pd.NA or isinstance(value, float) else [float(x) for x in value]
    if _missing(value):
        return None
    if hasattr(value, "item") and not isinstance(value, (pd.Timestamp, datetime)):
        value = value.item()  # numpy scalars
    if kind == "string":
        return str(value)
    if kind == "int64":
        if isinstance(value, float):
            assert value.is_integer(), f"{column.name}={value!r} is not an integer"
        return int(value)
    if kind == "float64":
        return float(value)
    if kind == "bool":
        return bool(value)
    assert kind == "timestamp", kind
    if isinstance(value, (int, float)):  # Unix seconds, as rows before the schema stored finished_at
        return datetime.fromtimestamp(value, timezone.utc)
    stamp = pd.Timestamp(value)  # ISO text, as rows before the schema stored env_time_utc and ceiling_measured_at
    if stamp is pd.NaT:
        return None
    return (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")).to_pydatetime()


def _legacy(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row written before the schema, in the schema's names."""
    row = dict(row)
    for old, new in _RENAMED.items():
        if old in row:
            value = row.pop(old)
            if _missing(row.get(new)):
                row[new] = value
    timer, graph = row.pop("timer", None), row.pop("cuda_graph", None)
    if "timing" not in row and not _missing(timer):
        # Old timer names: cpu_wall, cuda_events, cuda_events_l2_flush; a graph replay set cuda_graph.
        row["timing"] = "cuda_graph" if graph is True else str(timer).removesuffix("_l2_flush")
        row["l2_flush"] = str(timer).endswith("_l2_flush")
    return {k: v for k, v in row.items() if k in schema.BY_NAME}


def to_table(rows: Iterable[Mapping[str, Any]], *, strict: bool = True) -> pa.Table:
    """Rows as a table of ``schema.ARROW_SCHEMA``; ``strict=False`` also takes rows written before it."""
    cells: dict[str, list[Any]] = {name: [] for name in schema.NAMES}
    for row in rows:
        if strict:
            unknown = sorted(set(row) - set(schema.NAMES))
            assert not unknown, f"columns {unknown} are not declared in harness/results/schema.py"
        else:
            row = _legacy(row)
        for column in schema.COLUMNS:
            cells[column.name].append(_cell(column, row.get(column.name)))
    return pa.Table.from_pydict(cells, schema=schema.ARROW_SCHEMA)


def conform(table: pa.Table) -> pa.Table:
    """A row file's table as ``schema.ARROW_SCHEMA`` (a no-op for files this harness wrote).

    Each column is first checked against its declared kind (``check_types``): a value is converted
    only where no information is lost, never by truthiness (``bool("false")`` is True)."""
    if table.schema.equals(schema.ARROW_SCHEMA):  # metadata aside: files written before the units carry none
        return pa.Table.from_arrays(table.columns, schema=schema.ARROW_SCHEMA)
    check_types(table)
    return to_table(table.to_pylist(), strict=False)


def _fits(kind: str, type_: pa.DataType) -> bool:
    """Whether a column stored as ``type_`` can hold values of ``kind`` (before the values are looked at)."""
    if pa.types.is_null(type_):
        return True
    if kind == "string":
        return pa.types.is_string(type_) or pa.types.is_large_string(type_)
    if kind == "bool":
        return pa.types.is_boolean(type_)
    if kind in ("int64", "float64"):  # old files stored integer columns with a null as float64
        return pa.types.is_integer(type_) or pa.types.is_floating(type_)
    if kind == "timestamp":  # old files: Unix seconds (finished_at) or ISO text
        return (pa.types.is_timestamp(type_) or pa.types.is_integer(type_) or pa.types.is_floating(type_)
                or pa.types.is_string(type_) or pa.types.is_large_string(type_))
    assert kind == "list<float64>", kind
    return ((pa.types.is_list(type_) or pa.types.is_large_list(type_))
            and (pa.types.is_floating(type_.value_type) or pa.types.is_integer(type_.value_type)
                 or pa.types.is_null(type_.value_type)))


def check_types(table: pa.Table) -> None:
    """``TypeError`` naming the first column whose stored type or value is not its declared kind
    (``batch`` holding 1.5, ``l2_flush`` holding the text ``"false"``); undeclared columns are not read."""
    for field in table.schema:
        column = schema.BY_NAME.get(_RENAMED.get(field.name, field.name))
        if column is None:
            continue
        if not _fits(column.kind, field.type):
            shown = next((v for v in table.column(field.name).to_pylist() if v is not None), None)
            raise ColumnTypeError(f"column {field.name} is declared {column.kind} but holds {field.type}"
                            f"{f' ({shown!r})' if shown is not None else ''}")
        if column.kind == "int64" and pa.types.is_floating(field.type):
            for value in table.column(field.name).to_pylist():
                if not _missing(value) and not (math.isfinite(value) and value.is_integer()):
                    raise ColumnTypeError(f"column {field.name} is declared int64 but holds {value!r}")


def to_frame(table: pa.Table) -> pd.DataFrame:
    """The table with the schema's pandas dtypes: nullable Int64 and boolean, NaN-padded floats."""
    assert table.schema.equals(schema.ARROW_SCHEMA)
    return table.to_pandas(types_mapper=_PANDAS_TYPES.get)


def from_frame(frame: pd.DataFrame) -> pa.Table:
    return to_table(frame.to_dict("records"))


@functools.cache
def pandas_metadata() -> dict[bytes, bytes]:
    """Schema-level ``pandas`` metadata naming the nullable dtypes (``Int64``, ``boolean``): written
    into every row file, it makes a plain ``pandas.read_parquet`` give what ``results.load`` gives,
    not floats for an integer column with a null. Only those columns are listed (text, floats and
    timestamps convert as they are): the full metadata would double a one-row file's footer."""
    nullable = [{"name": c.name, "field_name": c.name, "pandas_type": {"int64": "int64", "bool": "bool"}[c.kind],
                 "numpy_type": schema.PANDAS_DTYPES[c.kind], "metadata": None}
                for c in schema.COLUMNS if c.kind in ("int64", "bool")]
    meta = {"index_columns": [], "column_indexes": [], "columns": nullable, "pandas_version": pd.__version__}
    return {b"pandas": json.dumps(meta, separators=(",", ":")).encode()}


def for_file(table: pa.Table) -> pa.Table:
    """``table`` (of ``schema.ARROW_SCHEMA``) as a row file stores it: units per field, pandas dtypes."""
    return table.replace_schema_metadata(pandas_metadata())
