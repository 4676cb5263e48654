"""Judge completions from the command line.

    python -m research.judge score --judge relevance --input pairs.jsonl --out verdicts.jsonl
    python -m research.judge calibrate [--judge keyword --judge relevance] [--out agreement.json]

`score` reads `{"prompt", "response"[, "role"]}` rows (jsonl, or csv with those columns;
`role` is harmful or benign, `--role` for rows without one) and writes one verdict per
row, in order, with the row's own fields. A bad row is an error naming the file, line
and field; no row is skipped. `calibrate` prints each judge's agreement with the
labelled calibration set (research/evaluation/calibration/).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from research.data.files import iter_records
from research.data.rows import DataError
from research.evaluation import calibration as C
from research.evaluation.verdicts import ROLES, JudgeItem, get_judge, judge_all

OFFLINE_JUDGES = ("keyword", "keyword-start", "relevance")


def read_pairs(path: str | Path, default_role: str = "harmful") -> list[dict]:
    """Rows of a jsonl or csv file, each with text `prompt` and `response` (which may be
    empty) and a valid `role` (filled from `default_role` where absent)."""
    path = Path(path)
    if path.suffix not in (".jsonl", ".csv"):
        raise DataError(str(path), "expected a .jsonl or .csv file")
    rows = []
    for line_no, row in iter_records(path):
        for field in ("prompt", "response"):
            if not isinstance(row.get(field), str):
                raise DataError(str(path), "missing or not text", row=line_no, field=field)
        row = dict(row)
        row["role"] = row.get("role") or default_role
        if row["role"] not in ROLES:
            raise DataError(str(path), f"must be one of {ROLES}, got {row['role']!r}",
                            row=line_no, field="role")
        rows.append(row)
    return rows


def score_file(judge_name: str, src: str | Path, dst: str | Path,
               default_role: str = "harmful") -> int:
    """Write one verdict row per input row; returns the number of rows."""
    rows = read_pairs(src, default_role)
    judge = get_judge(judge_name)
    verdicts = judge_all(judge, [JudgeItem(r["prompt"], r["response"], r["role"])
                                 for r in rows])
    with Path(dst).open("w", encoding="utf-8") as f:
        for row, v in zip(rows, verdicts):
            f.write(json.dumps(row | v.to_record() | {"judge_version": judge.version}) + "\n")
    return len(rows)


def calibrate(judge_names: Sequence[str], path: str | Path = C.CALIBRATION_FILE) -> dict:
    """{judge: {"version", "fields": {field: agreement}, "held_out": {...}}} on the
    calibration set (all rows, and its held-out fold alone)."""
    rows = C.load_calibration(path)
    held = [i for i, r in enumerate(rows) if r.get("fold") == "held-out"]
    out = {}
    for name in judge_names:
        judge = get_judge(name)
        verdicts = judge_all(judge, C.items_of(rows))
        out[name] = {"version": judge.version, "fields": C.score_judge(rows, verdicts)}
        if held:
            out[name]["held_out"] = C.score_judge([rows[i] for i in held],
                                                  [verdicts[i] for i in held])
    second = Path(path).with_name(C.SECOND_READER_FILE.name)
    if second.exists():  # the human ceiling: a second reader's blind labels
        chosen, verdicts = C.second_reader(rows, second)
        out["second-reader"] = {"version": f"{len(chosen)} rows labelled blind",
                                "fields": C.score_judge(chosen, verdicts)}
    return out


def agreement_table(result: dict, n_rows: int) -> str:
    """Markdown: one line per judge and field (accuracy, kappa, n)."""
    lines = [f"Agreement with the calibration set ({n_rows} labelled pairs)", "",
             "| judge | version | rows | field | n | accuracy | kappa |",
             "|---|---|---|---|---|---|---|"]
    for name, r in result.items():
        for rows, fields in (("all", r["fields"]), ("held-out", r.get("held_out", {}))):
            for field, a in fields.items():
                kappa = "-" if a["kappa"] is None else f"{a['kappa']:.3f}"
                lines.append(f"| {name} | {r['version']} | {rows} | {field} | {a['n']} | "
                             f"{a['accuracy']:.3f} | {kappa} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m research.judge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score", help="judge a file of (prompt, response) rows")
    s.add_argument("--judge", default="relevance")
    s.add_argument("--input", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--role", default="harmful", choices=ROLES,
                   help="role of rows that have no 'role' field")
    c = sub.add_parser("calibrate", help="agreement of judges with the calibration set")
    c.add_argument("--judge", action="append", help="repeatable; default: offline judges")
    c.add_argument("--calibration", default=str(C.CALIBRATION_FILE))
    c.add_argument("--out", help="also write the agreement as JSON")
    args = parser.parse_args(argv)
    try:
        if args.command == "score":
            n = score_file(args.judge, args.input, args.out, args.role)
            print(f"{n} verdicts written to {args.out}")
            return 0
        result = calibrate(args.judge or OFFLINE_JUDGES, args.calibration)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(agreement_table(result, len(C.load_calibration(args.calibration))))
    for name, r in result.items():
        for field, a in r["fields"].items():
            print(f"\n{name} / {field}: confusion (rows = label, columns = judge) "
                  f"{a['classes']}")
            for cls, line in zip(a["classes"], a["confusion"]):
                print(f"  {cls:>8}: {line}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
