"""Real data files: every format reads, a bad row names its file and line, the split is deterministic."""

from __future__ import annotations

import json

import pytest
from conftest import PLURAL

from distill.data.loaders import read_rows
from distill.data.split import split_heldout
from distill.errors import DataError
from distill.rows import row_id


def test_bigbench_rows_carry_their_line():
    rows = read_rows(PLURAL, required=("input", "target"))
    assert len(rows) == 1702
    lines = PLURAL.read_text().splitlines()
    assert '"ability"' in lines[rows[0]["_line"] - 1]
    assert f'"{rows[500]["input"]}"' in lines[rows[500]["_line"] - 1]


def test_jsonl_row_missing_a_field_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"input": "cat", "target": "cats"}\n\n{"input": "dog"}\n')
    with pytest.raises(DataError) as e:
        read_rows(path, required=("input", "target"))
    assert str(e.value).startswith(f"{path}:3: row has no 'target' field")


def test_bigbench_row_missing_a_field_names_its_line(tmp_path):
    path = tmp_path / "task.json"
    path.write_text(json.dumps({"examples": [{"input": "a", "target": "b"}, {"input": "c"}]}, indent=2))
    with pytest.raises(DataError) as e:
        read_rows(path, required=("input", "target"))
    line = path.read_text().splitlines().index('      "input": "c"') + 1
    assert str(e.value).startswith(f"{path}:{line - 1}:")


def test_broken_json_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"input": "cat"}\n{"input": \n')
    with pytest.raises(DataError, match=rf"{path}:2: not valid JSON"):
        read_rows(path)


def test_csv_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d.csv").write_text("input,target\ncat,cats\n,x\n")
    with pytest.raises(DataError, match=r"d.csv:3: row has no 'input'"):
        read_rows(tmp_path / "d.csv", required=("input",))
    pq.write_table(pa.Table.from_pylist([{"input": "cat", "target": "cats"}]), tmp_path / "d.parquet")
    assert read_rows(tmp_path / "d.parquet")[0]["target"] == "cats"


def test_a_file_that_is_not_utf8_names_the_line_of_the_bad_byte(tmp_path):
    from distill.data.loaders import check_utf8

    for name, header in (("d.csv", b"input,target\n"), ("d.jsonl", b"")):
        path = tmp_path / name
        good = [b'{"input": "w", "target": "ws"}\n' if name.endswith("jsonl") else b"w,ws\n"] * 5000
        bad = b'{"input": "caf\xe9", "target": "x"}\n' if name.endswith("jsonl") else b"caf\xe9,x\n"
        path.write_bytes(header + b"".join(good[:4000]) + bad + b"".join(good[4000:]))
        line = 4001 + (1 if header else 0)
        with pytest.raises(DataError, match=rf"^{path}:{line}: not UTF-8"):
            read_rows(path)
        for block in (7, 1 << 20):  # the line is right however the file is cut into blocks
            with pytest.raises(DataError, match=rf"^{path}:{line}: not UTF-8"):
                check_utf8(path, block)
    split = tmp_path / "split.jsonl"  # a two-byte character cut by a block boundary is still valid UTF-8
    split.write_bytes('{"input": "\u00e9"}\n'.encode() * 10)
    check_utf8(split, 13)
    bom = tmp_path / "excel.csv"  # a byte-order mark (spreadsheet exports write one) is not part of the first column
    bom.write_bytes("\ufeffinput,target\ncat,cats\n".encode())
    assert read_rows(bom, required=("input",))[0]["input"] == "cat"


def test_a_json_list_of_rows_is_read_with_each_rows_line_and_other_json_says_what_distill_reads(tmp_path):
    listed = tmp_path / "alpaca_data.json"  # Alpaca's own file: a JSON list of objects
    listed.write_text('[\n  {"instruction": "Pluralize.", "input": "cat", "output": "cats"},\n'
                      '  {"instruction": "Pluralize.",\n   "input": "ox", "output": "oxen"}\n]\n')
    rows = read_rows(listed)
    assert [(r["input"], r["_line"]) for r in rows] == [("cat", 2), ("ox", 3)]
    wrapped = tmp_path / "items.json"
    wrapped.write_text(json.dumps({"data": [{"input": "cat"}]}))
    with pytest.raises(DataError, match=rf"^{wrapped}: an object without an 'examples' list, not a format distill reads; "
                                        "distill reads JSONL"):
        read_rows(wrapped)
    numbers = tmp_path / "numbers.json"
    numbers.write_text("[1, 2]")
    with pytest.raises(DataError, match=rf"^{numbers}:1: each row must be a JSON object"):
        read_rows(numbers)
    lines = tmp_path / "lines.json"  # JSON Lines under a .json name
    lines.write_text('{"input": "cat"}\n{"input": "dog"}\n')
    with pytest.raises(DataError, match=rf"^{lines}:2: .* rename it to .jsonl or set its format to jsonl"):
        read_rows(lines)
    assert [r["input"] for r in read_rows(lines, "jsonl")] == ["cat", "dog"]


def test_first_rows_of_each_format(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"input": f"w{i}", "target": f"w{i}s"} for i in range(50)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d.csv").write_text("input,target\n" + "".join(f"{r['input']},{r['target']}\n" for r in rows))
    for name in ("d.parquet", "d.jsonl", "d.csv"):
        first = read_rows(tmp_path / name, limit=3)
        assert [r["input"] for r in first] == ["w0", "w1", "w2"], name
    assert len(read_rows(PLURAL, limit=3)) == 3
    (tmp_path / "bad.parquet").write_text("input,target\n")
    with pytest.raises(DataError, match=r"bad.parquet: not a Parquet file"):
        read_rows(tmp_path / "bad.parquet", limit=3)


def test_heldout_split_is_deterministic_disjoint_and_covers_rare_slices():
    rows = read_rows(PLURAL)
    held, rest = split_heldout(rows, 200, seed=0, slice_field="comment", min_per_slice=15)
    again, _ = split_heldout(rows, 200, seed=0, slice_field="comment", min_per_slice=15)
    assert [r["input"] for r in held] == [r["input"] for r in again]
    assert len(held) == 200 and len(held) + len(rest) == len(rows)
    assert not {r["_line"] for r in held} & {r["_line"] for r in rest}
    assert sum(r["comment"] == "irregular" for r in held) >= 15


# --------------------------------------------------------------------------- the held-out split, as generate makes it


def words(n: int, slice_of=lambda i: "regular") -> list[dict]:
    return [{"input": f"word{i}", "target": f"word{i}s", "comment": slice_of(i), "_line": i + 1} for i in range(n)]


def test_min_per_slice_never_makes_the_split_larger_than_its_size():
    from distill.errors import UserError

    rows = words(60, lambda i: f"s{i % 6}")  # six slices of ten rows
    held, rest = split_heldout(rows, 12, seed=1, slice_field="comment", min_per_slice=2)
    assert len(held) == 12 and len(rest) == 48
    assert all(sum(r["comment"] == f"s{k}" for r in held) >= 2 for k in range(6))
    with pytest.raises(UserError, match=r"data.heldout.min_per_slice = 3 over the 6 slices of data.slice_field 'comment' "
                                        r"needs 18 held-out rows, more than data.heldout.size = 12"):
        split_heldout(rows, 12, seed=1, slice_field="comment", min_per_slice=3)


def prepared(tmp_path, tiny_model, rows: list[dict], heldout: dict, **data):
    from distill.generate.stage import prepare_data
    from distill.recipe import Recipe
    from distill.run_dir import RunDir

    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "_line"}) + "\n" for r in rows))
    recipe = Recipe.model_validate({
        "name": "split", "models": {"teacher": {"path": str(tiny_model)}, "student": {"path": str(tiny_model)}},
        "data": {"path": str(path), "slice_field": "comment", "heldout": heldout, **data},
        "generate": {"template": "{{ input }}"}, "train": {"prompt_template": "{{ input }}"},
        "evaluate": {"sets": [{"name": "plural", "data": "heldout"}]},
    })
    run = RunDir(tmp_path / "run")
    return prepare_data(recipe, run), run


def test_a_slice_too_small_to_be_held_out_and_seeded_gets_one_warning(tmp_path, tiny_model, capsys):
    rows = words(40, lambda i: "irregular" if i in (3, 17) else "zero" if i == 30 else "regular")
    (held, seeds), _ = prepared(tmp_path, tiny_model, rows, {"size": 10, "min_per_slice": 2})
    lines = [x for x in capsys.readouterr().out.splitlines() if "warning" in x]
    assert lines == ["[generate] warning: 2 slice(s) of 'comment' have no more rows than data.heldout.min_per_slice = 2, "
                     "so all are held out and none is a seed: irregular (2), zero (1)"]
    assert {r["slice"] for r in held} == {"irregular", "zero", "regular"} and len(held) == 10
    assert not {r["slice"] for r in seeds} & {"irregular", "zero"}


def test_a_repeated_input_stays_two_heldout_items_and_never_becomes_a_seed(tmp_path, tiny_model):
    rows = words(30)
    rows += [{**r, "_line": 31 + k} for k, r in enumerate(rows[:30])]  # every input twice, on two lines
    (held, seeds), run = prepared(tmp_path, tiny_model, rows, {"size": 20, "seed": 3})
    assert len(held) == 20 and len({r["id"] for r in held}) == 20
    assert any(a["input"] == b["input"] for a in held for b in held if a is not b)  # some input is held out twice
    assert not {r["input"] for r in held} & {r["input"] for r in seeds}
    from distill.data.eval_sets import load_items
    from distill.recipe import EvalSet

    items = load_items(EvalSet(name="plural", data="heldout"), run.heldout)  # what evaluate and decontamination read
    assert [it["id"] for it in items] == [r["id"] for r in held]


def test_a_repeated_seed_input_keeps_a_row_id_of_its_own(tmp_path, tiny_model):
    """Captures, calibration and the filter's records are keyed by row id: two seeds with one id would keep one."""
    rows = words(30)
    rows += [{**r, "_line": 31 + k, "target": r["target"] + "es"} for k, r in enumerate(rows[:10])]  # relabelled twice
    (_, seeds), _ = prepared(tmp_path, tiny_model, rows, {"size": 5, "seed": 3})
    assert len({r["input"] for r in seeds}) < len(seeds)
    assert len({r["id"] for r in seeds}) == len(seeds)
    first = {}
    for r in seeds:  # the first of two keeps the id it always had
        first.setdefault(r["input"], r["id"])
    assert all(first[r["input"]] == row_id(r["input"]) for r in seeds)


def test_an_unlabelled_heldout_split_is_refused_before_any_model_is_scored(tmp_path, tiny_model):
    from distill.errors import UserError
    from distill.data.eval_sets import load_items
    from distill.recipe import EvalSet

    with pytest.raises(UserError, match=r"evaluate.sets.0 \('plural'\) scores the held-out split, but data.target_field is null"):
        prepared(tmp_path, tiny_model, words(20), {"size": 5}, target_field=None)
    rows = [{**r, "target": "" if i else r["target"]} for i, r in enumerate(words(20))]  # only the first is labelled
    with pytest.raises(UserError, match=r"data.jsonl:\d+: held-out row has no 'target' value \(\d+ of the 5 held-out rows"):
        prepared(tmp_path, tiny_model, rows, {"size": 5})
    heldout = tmp_path / "heldout.jsonl"  # a split written without references: evaluate stops on it too
    heldout.write_text("".join(json.dumps({"id": f"i{i}", "input": f"w{i}", "reference": None, "references": []}) + "\n" for i in range(4)))
    with pytest.raises(UserError, match=r"evaluate set 'plural' scores the held-out split, but 4 of its 4 items .* no reference"):
        load_items(EvalSet(name="plural", data="heldout"), heldout)


def test_validate_refuses_an_unlabelled_heldout_split_before_any_work(tmp_path, tiny_model):
    from conftest import run_cli, write_recipe

    recipe = write_recipe(tmp_path, tiny_model)
    result = run_cli("validate", recipe, "data.target_field=null")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "data.target_field is null" in result.stderr
    assert run_cli("validate", recipe).returncode == 0


def test_target_names_rename_the_references_of_seeds_and_heldout_items(tmp_path, tiny_model):
    rows = [{"input": f"w{i}", "target": "add_to_playlist" if i % 2 else "get_weather", "comment": "regular",
             "_line": i + 1} for i in range(30)]
    (held, seeds), _ = prepared(tmp_path, tiny_model, rows, {"size": 10},
                                target_names={"add_to_playlist": "playlist"})  # get_weather is not listed: it stays
    assert {r["reference"] for r in held + seeds} == {"playlist", "get_weather"}
    assert all(r["references"] == [r["reference"]] for r in held + seeds)
