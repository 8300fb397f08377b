import json

import numpy as np
import pytest
from conftest import make_cfg

from detox.core.hub import LoadError
from detox.data.sampling import PromptSampler, sample_max_new_tokens
from detox.data.splits import DataError, load_splits


def write_rows(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def data_cfg(path, *overrides):
    return make_cfg(["data=bundled", f"data.name_or_path={path}", *overrides]).data


def rows_of_lengths(lengths):
    return [{"id": f"r{i}", "dialogue": "x" * n, "summary": f"s{i}"} for i, n in enumerate(lengths)]


def test_length_filter_is_the_recipes_half_open_interval(tmp_path):
    # 200 < len <= 1000: 200 is out, 201 and 1000 in, 1001 out.
    lengths = [200, 201, 500, 1000, 1001] + [300] * 20
    splits = load_splits(data_cfg(write_rows(tmp_path / "d.jsonl", rows_of_lengths(lengths))))
    kept = sorted(len(d) for s in splits.values() for d in s["dialogue"])
    assert kept == sorted([201, 500, 1000] + [300] * 20)


def test_rows_without_a_dialogue_are_dropped_and_counted(tmp_path, caplog):
    rows = rows_of_lengths([300] * 30)
    for row in rows[::3]:  # a third of the rows: a null dialogue
        row["dialogue"] = None
    rows[1]["dialogue"] = " " * 400  # blank, though long enough
    with caplog.at_level("INFO", logger="detox.data.splits"):
        splits = load_splits(data_cfg(write_rows(tmp_path / "d.jsonl", rows)))
    assert sum(len(s) for s in splits.values()) == 19
    assert "dropped 11 of 30 rows with no dialogue (null or blank)" in caplog.text
    assert "outside" not in caplog.text  # no row was dropped for its length


def test_prompt_template_and_deterministic_disjoint_splits(tmp_path):
    rows = [{"id": f"r{i}", "dialogue": f"#Person1#: hello {i} " + "y" * 250, "summary": "s"} for i in range(100)]
    path = write_rows(tmp_path / "d.jsonl", rows)
    a = load_splits(data_cfg(path, "data.test_size=0.2", "data.val_size=0.1"))
    b = load_splits(data_cfg(path, "data.test_size=0.2", "data.val_size=0.1"))
    assert {k: len(v) for k, v in a.items()} == {"train": 70, "validation": 10, "test": 20}
    assert a["test"]["id"] == b["test"]["id"] and a["train"]["id"] == b["train"]["id"]
    ids = [set(s["id"]) for s in a.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    row = a["train"][0]
    assert row["prompt"] == f"\nSummarize the following conversation.\n\n{row['dialogue']}\n\nSummary:\n"
    # another split seed gives another test split; val_size does not change the test split
    c = load_splits(data_cfg(path, "data.split_seed=7"))
    assert set(c["test"]["id"]) != set(a["test"]["id"])
    d = load_splits(data_cfg(path, "data.test_size=0.2", "data.val_size=0.3"))
    assert d["test"]["id"] == a["test"]["id"]


def test_unshuffled_split_takes_the_tail_as_test(tmp_path):
    rows = [{"id": f"r{i}", "dialogue": "z" * 300, "summary": "s"} for i in range(10)]
    splits = load_splits(data_cfg(write_rows(tmp_path / "d.jsonl", rows), "data.shuffle=false",
                                  "data.test_size=0.2", "data.val_size=0"))
    assert splits["test"]["id"] == ["r8", "r9"] and "validation" not in splits


def test_csv_and_parquet_load_too(tmp_path):
    import pandas as pd

    frame = pd.DataFrame(rows_of_lengths([300] * 12))
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet")
    for name in ("d.csv", "d.parquet"):
        assert sum(len(s) for s in load_splits(data_cfg(tmp_path / name)).values()) == 12


def test_missing_column_names_the_column_and_the_fix(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [{"id": "a", "text": "x" * 300, "summary": "s"}] * 5)
    with pytest.raises(DataError, match=r"no column\(s\) \['dialogue'\].*data.dialogue_column"):
        load_splits(data_cfg(path))


def test_extra_columns_for_evaluation_are_checked(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", rows_of_lengths([300] * 5))
    with pytest.raises(DataError, match="heated"):
        load_splits(data_cfg(path), extra_columns=("heated",))


def test_empty_after_filter_says_so(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", rows_of_lengths([10, 20, 30]))
    with pytest.raises(DataError, match=r"0 of 3 dialogues are left.*data.min_chars"):
        load_splits(data_cfg(path))


def test_unknown_file_type_and_missing_path(tmp_path):
    (tmp_path / "d.txt").write_text("hi")
    with pytest.raises(DataError, match="unknown file type"):
        load_splits(data_cfg(tmp_path / "d.txt"))
    with pytest.raises(DataError, match="does not exist"):
        load_splits(data_cfg(tmp_path / "nope.jsonl"))


def test_unreachable_hub_dataset_points_to_local_paths_and_quickstart():
    with pytest.raises(LoadError, match=r"(?s)data.name_or_path=.no-such-user/no-such-set.*experiment=quickstart"):
        load_splits(data_cfg("no-such-user/no-such-set"))


def test_max_new_tokens_draw_is_uniform_on_half_open_range():
    draws = sample_max_new_tokens(np.random.default_rng(0), 20000, 100, 400)
    assert draws.min() == 100 and draws.max() == 399
    assert abs(draws.mean() - 249.5) < 2


def test_prompt_sampler_covers_epochs_and_resumes():
    a = PromptSampler(size=10, batch_size=4, seed=3)
    first = [a.next_indices() for _ in range(5)]  # 20 = two epochs
    assert sorted(sum(first[:2], []) + first[2][:2]) == list(range(10))
    b = PromptSampler(size=10, batch_size=4, seed=3)
    b.next_indices()
    state = b.state_dict()
    c = PromptSampler(size=10, batch_size=4, seed=3)
    c.load_state_dict(state)
    assert [c.next_indices() for _ in range(4)] == first[1:]
