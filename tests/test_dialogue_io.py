"""Reading dialogues to summarize (detox-generate's inputs) and writing its rows."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from detox.core.errors import DataError
from detox.data.dialogue_io import read_dialogues, write_rows

ROWS = [{"id": "a7", "dialogue": "#Person1#: Hi.\n#Person2#: Hello.", "topic": "x"},
        {"id": "b2", "dialogue": "#Person1#: Bye.\n#Person2#: See you.", "topic": "y"}]
EXPECTED = [{"id": r["id"], "dialogue": r["dialogue"]} for r in ROWS]


def read(source, column="dialogue", id_column="id"):
    return read_dialogues(source, column, id_column, column_key="--column", id_key="--id-column")


def test_tables_keep_their_ids(tmp_path):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS) + "\n")
    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    with open(tmp_path / "d.csv", "w", newline="") as f:
        f.write('id,dialogue,topic\na7,"#Person1#: Hi.\n#Person2#: Hello.",x\nb2,"#Person1#: Bye.\n#Person2#: See you.",y\n')
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.json", "d.csv", "d.parquet"):
        assert read(str(tmp_path / name)) == EXPECTED, name
    renamed = [{"key": r["id"], "text": r["dialogue"]} for r in ROWS]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in renamed))
    assert read(str(tmp_path / "r.jsonl"), column="text", id_column="key") == EXPECTED
    assert [r["id"] for r in read(str(tmp_path / "r.jsonl"), column="text")] == [0, 1]  # no `id`: row numbers


def test_text_blocks_and_stdin(tmp_path, monkeypatch):
    text = "#Person1#: Hi.\n#Person2#: Hello.\n\n  \n#Person1#: Bye.\r\n#Person2#: See you.\n\n"
    (tmp_path / "d.txt").write_text(text)
    numbered = [{"id": i, "dialogue": r["dialogue"]} for i, r in enumerate(ROWS)]
    assert read(str(tmp_path / "d.txt")) == numbered
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    assert read("-") == numbered
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(json.dumps(r) + "\n" for r in ROWS)))
    assert read(None) == EXPECTED  # JSON lines on stdin


@pytest.mark.parametrize("content, message", [
    ('{"id": 1, "dialogue": 3}\n', r"row 0: the dialogue \('dialogue'\) is a int"),
    ('{"id": 1, "dialogue": "  "}\n', r"row 0: the dialogue \('dialogue'\) is empty"),
    ('{"id": 1, "dialogue": "a"}\n{"dialogue": "b"}\n', r"some rows have no 'id'"),
    ('[1, 2]\n', r"line 1 is a JSON list, not an object"),
    ('\n\n', r"holds no dialogues"),
])
def test_bad_rows_are_named(content, message, tmp_path):
    (tmp_path / "d.jsonl").write_text(content)
    with pytest.raises(DataError, match=message):
        read(str(tmp_path / "d.jsonl"))


def test_rows_are_written_whole(tmp_path, capsys):
    write_rows([{"id": 1, "summary": "Ça va."}], str(tmp_path / "out.jsonl"))
    assert json.loads((tmp_path / "out.jsonl").read_text()) == {"id": 1, "summary": "Ça va."}
    write_rows([{"id": 1, "summary": "Ça va."}], None)
    assert capsys.readouterr().out == '{"id": 1, "summary": "Ça va."}\n'
