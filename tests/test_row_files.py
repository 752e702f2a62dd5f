"""i2v.utils.tables.read_rows: the one reader of CSV / JSON-lines / JSON row files (prompts, manifests)."""
import json

import pytest

from i2v.utils.tables import read_rows


def test_csv_with_bom_and_numbering(tmp_path):
    p = tmp_path / "rows.csv"
    p.write_text("\ufeffimage,prompt\na.png,one\nb.png,two\n", encoding="utf-8")
    assert read_rows(p) == [(1, {"image": "a.png", "prompt": "one"}), (2, {"image": "b.png", "prompt": "two"})]


def test_jsonl_bad_line_becomes_its_error_text(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text('{"image": "a.png"}\n\nnot json\n[1, 2]\n')
    rows = read_rows(p)
    assert [n for n, _ in rows] == [1, 2, 3] and rows[0][1] == {"image": "a.png"}
    assert rows[1][1].startswith("not valid JSON") and rows[2][1] == [1, 2]


def test_other_suffixes(tmp_path):
    doc = tmp_path / "m.json"
    doc.write_text(json.dumps({"items": [{"image": "a.png"}, {"image": "b.png"}]}))
    assert read_rows(doc, other="document") == [(1, {"image": "a.png"}), (2, {"image": "b.png"})]
    lines = tmp_path / "m.txt"
    lines.write_text('{"path": "v.mp4"}\n')
    assert read_rows(lines, other="lines") == [(1, {"path": "v.mp4"})]
    with pytest.raises(ValueError, match=r"\.csv or \.jsonl"):
        read_rows(lines)
    with pytest.raises(ValueError, match="JSON list"):
        (tmp_path / "bad.json").write_text('{"rows": []}')
        read_rows(tmp_path / "bad.json", other="document")
    with pytest.raises(FileNotFoundError):
        read_rows(tmp_path / "missing.csv")
