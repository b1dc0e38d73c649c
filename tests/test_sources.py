from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchrun.blocks import BlockFile
from batchrun.errors import InputError
from batchrun.jobs import InputSpec
from batchrun.sources import ID_COLUMN, ROW_COLUMN, find_bad_utf8, open_source


def spec(path: Path, **kw: object) -> InputSpec:
    return InputSpec(path=path, **kw)  # type: ignore[arg-type]


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    p = tmp_path / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return p


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope.csv: input file not found"):
        open_source(spec(tmp_path / "nope.csv"))


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"empty.csv: the file is empty"):
        open_source(spec(write(tmp_path, "empty.csv", b"")))


def test_header_only_file_has_no_rows(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"hdr.csv: no rows below its header"):
        open_source(spec(write(tmp_path, "hdr.csv", "id,text\n")))


def test_bad_encoding_names_the_line(tmp_path: Path) -> None:
    p = write(tmp_path, "latin.csv", b"id,text\n1,hello\n2,ok\n3,caf\xe9 au lait\n")
    with pytest.raises(InputError, match=r"latin.csv: line 4, byte 6: not valid UTF-8"):
        open_source(spec(p))


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1 << 20])
def test_find_bad_utf8_across_chunk_boundaries(tmp_path: Path, chunk: int) -> None:
    p = write(tmp_path, "x.txt", "ok\nstill ok é\n".encode() + b"bad \xff here\n")
    assert find_bad_utf8(p, chunk_size=chunk) == (3, 5)
    good = write(tmp_path, "g.txt", "é\n東京\n")
    assert find_bad_utf8(good, chunk_size=chunk) is None


def test_missing_id_column(tmp_path: Path) -> None:
    p = write(tmp_path, "a.csv", "key,text\n1,a\n")
    with pytest.raises(InputError, match=r"id column 'id' not found; the columns are \['key', 'text'\]"):
        open_source(spec(p, id_column="id"))


def test_missing_ids_are_listed(tmp_path: Path) -> None:
    p = write(tmp_path, "a.csv", "id,text\n1,a\n,b\n3,c\n,d\n")
    with pytest.raises(InputError, match=r"2 row\(s\) have no value in id column 'id' \(data rows 2, 4\)"):
        open_source(spec(p, id_column="id"))


def test_duplicate_ids_are_listed(tmp_path: Path) -> None:
    p = write(tmp_path, "a.csv", "id,text\nx,a\ny,b\nx,c\nz,d\ny,e\n")
    with pytest.raises(InputError, match=r"duplicate ids \('x' on data rows 1, 3; 'y' on data rows 2, 5\)"):
        open_source(spec(p, id_column="id"))


def test_unknown_output_columns(tmp_path: Path) -> None:
    p = write(tmp_path, "a.csv", "id,text\n1,a\n")
    with pytest.raises(InputError, match=r"input.columns names \['txt'\]"):
        open_source(spec(p, columns=("txt",)))


def test_row_numbers_are_ids_and_survive_filter_and_limit(tmp_path: Path) -> None:
    p = write(tmp_path, "a.csv", "text,score\na,1\nb,5\nc,2\nd,7\ne,9\n")
    src = open_source(spec(p, filter="score >= 5", limit=2))
    rows = pl.concat(list(src.batches(1)))
    assert rows["text"].to_list() == ["b", "d"]
    assert rows[ROW_COLUMN].to_list() == [1, 3]
    assert rows[ID_COLUMN].to_list() == ["1", "3"]
    assert src.rows == 2


def test_filter_that_matches_nothing(tmp_path: Path) -> None:
    p = write(tmp_path, "a.csv", "text,score\na,1\n")
    with pytest.raises(InputError, match=r"no rows after input\.filter/limit"):
        open_source(spec(p, filter="score > 100"))


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "xlsx", "tsv"])
def test_formats(tmp_path: Path, fmt: str) -> None:
    df = pl.DataFrame({"id": ["r1", "r2", "r3"], "text": ["a", "b", "c"], "n": [1, 2, 3]})
    path = tmp_path / f"data.{fmt}"
    if fmt == "parquet":
        df.write_parquet(path)
    elif fmt == "jsonl":
        df.write_ndjson(path)
    elif fmt == "xlsx":
        df.write_excel(path)
    else:
        df.write_csv(path, separator="\t")
    src = open_source(spec(path, id_column="id"))
    out = pl.concat(list(src.batches(2)))
    assert out["text"].to_list() == ["a", "b", "c"]
    assert out[ID_COLUMN].to_list() == ["r1", "r2", "r3"]
    assert src.columns == ("id", "text", "n")


def test_large_parquet_streams_in_batches(tmp_path: Path) -> None:
    n = 200_000
    pl.DataFrame({"text": [f"row {i}" for i in range(n)]}).write_parquet(
        tmp_path / "big.parquet", row_group_size=10_000
    )
    src = open_source(spec(tmp_path / "big.parquet"))
    sizes = [b.height for b in src.batches(25_000)]
    assert sum(sizes) == n and max(sizes) <= 25_000


def test_unparseable_jsonl(tmp_path: Path) -> None:
    p = write(tmp_path, "a.jsonl", '{"a": 1}\n{"a":\n')
    with pytest.raises(InputError, match=r"a.jsonl: cannot read as jsonl"):
        open_source(spec(p))


def test_csv_type_inference_uses_the_whole_file(tmp_path: Path) -> None:
    lines = ["id,text"] + [f"{i},t" for i in range(500)] + ["A12,t"]
    p = write(tmp_path, "a.csv", "\n".join(lines) + "\n")
    src = open_source(spec(p, id_column="id"))
    assert src.rows == 501


WriteJob = Callable[..., Path]


def test_ragged_csv_line_fails_before_the_run(tmp_path: Path) -> None:
    p = write(tmp_path, "a.csv", "id,text\n1,fine\n2,one, too many\n")
    with pytest.raises(InputError, match=r"a.csv: line 3 has 3 fields where the header has 2"):
        open_source(spec(p, id_column="id"))


# -- block reading (flat memory) ------------------------------------------------------------------


_cell = st.text(alphabet=st.sampled_from(list('ab ,"\n\r;é1.-')), max_size=12)


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(st.tuples(_cell, st.integers(-5, 10**6), _cell), min_size=1, max_size=40),
    block=st.integers(1, 64),
)
def test_blocks_cut_only_between_records(tmp_path_factory, rows: list[tuple[str, int, str]], block: int) -> None:
    # quoted fields holding separators, quotes and newlines, cut into blocks of a few bytes: the rows
    # read block by block are the rows read whole
    import csv as pycsv

    path = tmp_path_factory.mktemp("blocks") / "t.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        w = pycsv.writer(f, quoting=pycsv.QUOTE_MINIMAL)
        w.writerow(["a", "n", "b"])
        w.writerows(rows)
    whole = pl.read_csv(path, infer_schema_length=None)
    blocks = BlockFile(path, "csv", ",", block_bytes=block)
    schema = blocks.infer()
    got = pl.concat(list(blocks.frames(schema)))
    assert got.schema == whole.schema
    assert got.to_dicts() == whole.to_dicts()


def test_block_types_are_inferred_over_the_whole_file(tmp_path: Path) -> None:
    lines = ["id,score,note"] + [f"r{i},{i}," for i in range(5000)] + ["r5000,2.5,late note"]
    path = tmp_path / "t.csv"
    path.write_text("\n".join(lines) + "\n")
    schema = BlockFile(path, "csv", ",", block_bytes=1024).infer()
    # an int column with one float at the end is Float64; a column empty until the last block is String
    assert schema == pl.Schema({"id": pl.String, "score": pl.Float64, "note": pl.String})
    jl = tmp_path / "t.jsonl"
    jl.write_text("".join(f'{{"id": "r{i}", "v": {i}}}\n' for i in range(3000)) + '{"id": "x", "v": 0.5, "w": "y"}\n')
    schema = BlockFile(jl, "jsonl", block_bytes=512).infer()
    assert schema == pl.Schema({"id": pl.String, "v": pl.Float64, "w": pl.String})


def test_open_source_reads_blocks_with_filter_limit_and_positions(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("id,n\n" + "".join(f"r{i},{i}\n" for i in range(30_000)))
    src = open_source(InputSpec(path=path, id_column="id", filter="n % 3 = 0", limit=7000))
    assert src.blocks is not None and src.rows == 7000
    got = pl.concat(list(src.batches(1000)))
    assert got.height == 7000 and got[ROW_COLUMN].to_list() == list(range(0, 21_000, 3))
    assert got[ID_COLUMN].to_list() == [f"r{i}" for i in range(0, 21_000, 3)]


def test_duplicate_ids_far_apart_are_found_in_one_pass(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    ids = [f"r{i}" for i in range(100_000)]
    ids[90_000] = "r7"
    path.write_text("id,n\n" + "".join(f"{x},{i}\n" for i, x in enumerate(ids)))
    with pytest.raises(InputError, match=r"duplicate ids \('r7' on data rows 8, 90001\)"):
        open_source(InputSpec(path=path, id_column="id"))
