"""Task specs -> seqio Tasks: sources, field mapping, tokenized outputs, registration rules."""

import json
import os

import numpy as np
import pytest
import seqio
import tensorflow as tf
import yaml
from conftest import needs_data

from flan_jax.data import sources, task_examples, tasks, vocab

TEMPLATES = [
    {"inputs": "Is '{text}' good or bad?\n{options_}", "targets": "{answer}"},
    {"inputs": "Review: {text}", "targets": "{answer}"},
    {"inputs": "Write a {answer} review.", "targets": "{text}", "inverted": True},
]


def byte_ids(text: str) -> list[int]:
    return [b + 3 for b in text.encode()] + [1]  # ByteVocabulary: byte + 3; EOS = 1


@pytest.fixture
def jsonl(tmp_path, monkeypatch):
    monkeypatch.setenv("FLAN_JAX_DATA_DIR", str(tmp_path))
    rows = [
        {"review": f"movie {i} was {'fun' if i % 2 else 'dull'}", "label": i % 2} for i in range(6)
    ]
    for split in ("train", "dev"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def spec_dict(name: str, **kw) -> dict:
    return {
        "name": name,
        "cluster": "sentiment",
        "source": {
            "type": "jsonl",
            "splits": {
                "train": "$FLAN_JAX_DATA_DIR/train.jsonl",
                "validation": "$FLAN_JAX_DATA_DIR/dev.jsonl",
            },
        },
        "fields": {"text": "review", "answer": "label"},
        "options": ["bad", "good"],
        "label_map": {0: "bad", 1: "good"},
        "templates": TEMPLATES,
        "vocabulary": "byte",
        **kw,
    }


@pytest.fixture
def registered(jsonl):
    names = tasks.register_task_spec(spec_dict("t_review"))
    yield names
    tasks.unregister_task_spec("t_review")


def take(name: str, split: str = "validation", lengths=None, n: int = 6) -> list[dict]:
    ds = seqio.get_mixture_or_task(name).get_dataset(
        lengths or {"inputs": 128, "targets": 32}, split=split, shuffle=False
    )
    return list(ds.take(n).as_numpy_iterator())


def test_registered_task_outputs_exact_tokens_and_metadata(registered):
    assert registered == [
        "t_review_zs_opt",
        "t_review_zs_noopt",
        "t_review_fs_opt",
        "t_review_fs_noopt",
    ]
    ex0, ex1, ex2 = take("t_review_zs_opt", n=3)
    inputs = "Is 'movie 0 was dull' good or bad?\nOPTIONS:\n- bad\n- good"
    assert ex0["inputs_pretokenized"].decode() == inputs
    assert ex0["inputs"].tolist() == byte_ids(inputs)
    assert ex0["targets"].tolist() == byte_ids("bad")
    assert ex0["_task_name"] == b"t_review_zs_opt" and ex0["_cluster"] == b"sentiment"
    assert (ex0["_template_idx"], ex0["_template_type"]) == (0, b"zs_opt")
    assert ex0["options"].tolist() == [b"bad", b"good"]
    assert ex1["inputs_pretokenized"] == b"Review: movie 1 was fun\n\nOPTIONS:\n- bad\n- good"
    assert (ex2["inputs_pretokenized"], ex2["targets_pretokenized"]) == (
        b"Write a bad review.",
        b"movie 2 was dull",
    )
    assert ex2["_template_type"] == b"zs_opt_inverted" and ex2["options"].tolist() == []


def test_few_shot_is_pruned_to_the_inputs_length(registered):
    lengths = {"inputs": 512, "targets": 8}
    full = take("t_review_fs_noopt", "train", lengths, n=1)[0]["inputs_pretokenized"].decode()
    shots = full.split("\n\n")
    assert len(shots) == 4 and shots[-1] == "Is 'movie 0 was dull' good or bad?"
    assert "movie 0 was dull\nbad" not in shots  # never the example itself
    budget = len(full.encode()) - len(shots[2]) - 2 + 1  # drops exactly the last exemplar
    pruned = take(
        "t_review_fs_noopt", split="train", lengths={"inputs": budget, "targets": 8}, n=1
    )[0]
    assert pruned["inputs_pretokenized"].decode() == "\n\n".join(shots[:2] + shots[3:])
    assert pruned["inputs"].tolist() == byte_ids("\n\n".join(shots[:2] + shots[3:]))


def test_few_shot_iterator_state_is_checkpointable(registered, tmp_path):
    """Pruning is pure TF, so the trainer can save the iterator and resume exactly."""
    ds = seqio.get_mixture_or_task("t_review_fs_opt").get_dataset(
        {"inputs": 96, "targets": 8}, split="train", shuffle=True, seed=3
    )
    it = iter(ds)
    next(it)
    ckpt = tf.train.Checkpoint(iterator=it)
    path = ckpt.write(str(tmp_path / "it"))
    expected = [next(it)["inputs"].numpy().tolist() for _ in range(3)]
    resumed = iter(ds)
    tf.train.Checkpoint(iterator=resumed).read(path).assert_consumed()
    assert [next(resumed)["inputs"].numpy().tolist() for _ in range(3)] == expected
    assert all(len(x) <= 96 for x in expected)


def test_registration_is_idempotent_and_clashes_are_errors(registered):
    assert tasks.register_task_spec(spec_dict("t_review")) == registered
    with pytest.raises(ValueError, match="a different spec named 't_review'"):
        tasks.register_task_spec(spec_dict("t_review", seed=1))


def test_nothing_registered_half_way(jsonl):
    seqio.TaskRegistry.add(
        "t_clash_fs_opt",
        source=seqio.FunctionDataSource(lambda split, shuffle_files: None, splits=["train"]),
        output_features={},
    )
    try:
        with pytest.raises(ValueError, match="'t_clash_fs_opt' is already registered"):
            tasks.register_task_spec(spec_dict("t_clash"))
        assert "t_clash_zs_opt" not in seqio.TaskRegistry.names()
    finally:
        seqio.TaskRegistry.remove("t_clash_fs_opt")
    bad = spec_dict("t_bad", templates=TEMPLATES + [{"inputs": "{txt}", "targets": "{answer}"}])
    with pytest.raises(ValueError, match=r"task 't_bad': template 3 of set .* uses \{txt\}"):
        tasks.register_task_spec(bad)
    assert not [n for n in seqio.TaskRegistry.names() if n.startswith("t_bad")]


def test_unknown_task_lists_close_names(registered):
    with pytest.raises(
        ValueError, match=r"unknown task 't_reveiw_zs_opt'; closest: \['t_review_zs_opt'"
    ):
        tasks.get_task_spec("t_reveiw_zs_opt")


@pytest.mark.parametrize(
    "change, match",
    [
        ({"formats": ["zs_opt", "few"]}, r"formats \['zs_opt', 'few'\] must be in"),
        ({"formats": ["cot"]}, r"formats \['cot'\] need `cot_templates:`"),
        ({"templates": []}, "is empty"),
        ({"templates": "no_such_set"}, "template set 'no_such_set' not found"),
        ({"template_index": 7}, "template_index 7 is out of range for set .* of 3"),
        ({"fields": {"text": "review"}}, "a task with options needs an `answer` field"),
        ({"temperature": 2}, r"unknown key 'temperature'"),
        ({"template_assignment": "cyclic"}, "template_assignment 'cyclic'"),
    ],
)
def test_bad_specs(jsonl, change, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        tasks.load_task_spec(spec_dict("t_bad", **change))


def test_file_errors_name_path_and_line(jsonl, monkeypatch):
    spec = tasks.load_task_spec(spec_dict("t_files"))
    (jsonl / "dev.jsonl").write_text('{"review": "ok", "label": 1}\n{"review": oops}\n')
    with pytest.raises(ValueError, match=r"dev.jsonl:2: malformed JSON line"):
        tasks.get_examples(spec, "validation")
    (jsonl / "dev.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"dev.jsonl.*does not exist.*FLAN_JAX_DATA_DIR"):
        tasks.get_examples(spec, "validation")
    monkeypatch.delenv("FLAN_JAX_DATA_DIR")
    with pytest.raises(FileNotFoundError, match=r"uses \$FLAN_JAX_DATA_DIR, which is not set"):
        sources.check_available(spec.source, "train")
    with pytest.raises(ValueError, match=r"label '7' is not in label_map"):
        bad = tasks.load_task_spec(
            dict(
                spec_dict("t_lbl"),
                source={"type": "function", "fn": "json:loads", "splits": ["train"]},
            )
        )
        task_examples._map_fields(bad, {"review": "x", "label": 7}, "train", 0)


def test_tsv_csv_sources(tmp_path):
    (tmp_path / "a.tsv").write_text("s1\ts2\tlabel\nA cat.\tA pet.\t1\n")
    (tmp_path / "b.csv").write_text('"Hi, you",yes\n"x",no,extra\n')
    tsv = sources.source_from_dict({"type": "tsv", "splits": {"train": str(tmp_path / "a.tsv")}})
    assert list(sources.iter_examples(tsv, "train")) == [
        {"s1": "A cat.", "s2": "A pet.", "label": "1"}
    ]
    csv_ = sources.source_from_dict(
        {"type": "csv", "columns": ["text", "answer"], "splits": {"train": str(tmp_path / "b.csv")}}
    )
    it = sources.iter_examples(csv_, "train")
    assert next(it) == {"text": "Hi, you", "answer": "yes"}
    with pytest.raises(
        ValueError, match=r"b.csv:2: expected 2 columns \['text', 'answer'\], got 3"
    ):
        next(it)


def test_function_source_strip_unescape_and_preprocessor():
    spec = tasks.load_task_spec(
        {
            "name": "t_fn",
            "cluster": "qa",
            "source": {"type": "function", "fn": "data_tasks_test:make_rows", "args": {"n": 3}},
            "fields": {"prompt": "prompt", "completion": "completion"},
            "strip": {"completion": "<|endoftext|>"},
            "unescape_newlines": True,
            "preprocessor": "data_tasks_test:drop_odd",
            "templates": [{"inputs": "{prompt}", "targets": "{completion}"}],
            "formats": ["zs_noopt"],
            "vocabulary": "byte",
        }
    )
    assert list(spec.source.splits) == ["train", "validation", "test"]
    assert tasks.get_examples(spec, "test") == (
        {"prompt": "test 0\nline", "completion": "done 0"},
        {"prompt": "test 2\nline", "completion": "done 2"},
    )
    assert tasks.count_examples(spec, "test") == 2


def make_rows(split: str, n: int) -> list[dict]:
    return [
        {"prompt": f"{split} {i}\\nline", "completion": f" done {i} <|endoftext|>", "i": i}
        for i in range(n)
    ]


def drop_odd(row: dict) -> dict | None:
    return None if row["i"] % 2 else row


def test_tfds_source_with_mock_data():
    import tensorflow_datasets as tfds

    spec = tasks.load_task_spec(
        {
            "name": "t_rte",
            "cluster": "nli",
            "source": {
                "type": "tfds",
                "name": "super_glue/rte:1.0.2",
                "splits": {"train": "train", "validation": "validation"},
            },
            "fields": {"premise": "premise", "hypothesis": "hypothesis", "answer": "label"},
            "options": ["yes", "no"],
            "label_map": {0: "yes", 1: "no"},
            "templates": [
                {"inputs": "{premise}\nSo: {hypothesis}?\n{options_}", "targets": "{answer}"}
            ],
            "formats": ["zs_opt"],
            "vocabulary": "byte",
            "num_examples": {"train": 2490},
        }
    )
    names = tasks.register_task_spec(spec)
    try:
        with tfds.testing.mock_data(num_examples=4):
            raw = list(sources.iter_examples(spec.source, "validation"))
            got = take(names[0], n=4)
        assert len(got) == 4
        for r, ex in zip(raw, got):
            want = f"{r['premise']}\nSo: {r['hypothesis']}?\nOPTIONS:\n- yes\n- no"
            assert ex["inputs_pretokenized"].decode() == want
            assert ex["targets_pretokenized"].decode() == ["yes", "no"][r["label"]]
        assert tasks.count_examples(spec, "train") == 2490  # recorded size, no data read
    finally:
        tasks.unregister_task_spec("t_rte")


def test_yaml_spec_with_template_set_file(jsonl):
    (jsonl / "templates").mkdir()
    (jsonl / "templates" / "reviews.yaml").write_text(
        yaml.safe_dump({"fields": ["text", "answer"], "templates": TEMPLATES})
    )
    (jsonl / "spec.yaml").write_text(yaml.safe_dump(spec_dict("t_yaml", templates="reviews")))
    spec = tasks.load_task_spec(jsonl / "spec.yaml")
    assert spec == tasks.load_task_spec(
        spec_dict("t_yaml", templates="reviews", base_dir=str(jsonl))
    )
    assert spec.templates.name == "reviews" and len(spec.templates) == 3


def test_vocabularies(tmp_path, monkeypatch):
    assert isinstance(vocab.get_vocabulary("byte"), seqio.ByteVocabulary)
    monkeypatch.setenv("FLAN_JAX_VOCAB", str(tmp_path / "missing.model"))
    v = vocab.get_vocabulary("t5")  # constructing needs no file ...
    with pytest.raises(
        FileNotFoundError, match=r"missing.model' does not exist; set \$FLAN_JAX_VOCAB"
    ):
        v.encode("hi")  # ... using it does


@needs_data
def test_t5_vocabulary_from_data_dir(monkeypatch):
    monkeypatch.delenv("FLAN_JAX_VOCAB", raising=False)
    v = vocab.get_vocabulary("t5")
    assert v.vocab_size == 32100
    ids = v.encode("translate English to German: The house is wonderful.")
    assert ids == [13959, 1566, 12, 2968, 10, 37, 629, 19, 1627, 5]
    assert os.path.samefile(
        v.sentencepiece_model_file,
        os.path.join(os.environ["FLAN_JAX_DATA_DIR"], "tokenizer", "t5_spiece.model"),
    )
    assert np.array_equal(v.decode(ids), "translate English to German: The house is wonderful.")


@needs_data
def test_t5_vocabulary_shares_one_tf_tokenizer_with_seqio_ids(monkeypatch, tmp_path):
    """Every dataset captures the same tokenizer (one SentencePiece kernel for N tasks, not
    one per traced map) and the ids equal seqio's own SentencePieceVocabulary's."""
    import pickle

    monkeypatch.delenv("FLAN_JAX_VOCAB", raising=False)
    v = vocab.get_vocabulary("t5")
    plain = seqio.SentencePieceVocabulary(v.sentencepiece_model_file, extra_ids=100)
    texts = ["translate English to German: The house is wonderful.", "Ünï\ncode  x"]
    maps = [tf.data.Dataset.from_tensor_slices(texts).map(v.encode_tf) for _ in range(2)]
    want = [plain.encode_tf(t).numpy().tolist() for t in texts]
    assert want[0] == [13959, 1566, 12, 2968, 10, 37, 629, 19, 1627, 5]
    assert [[x.tolist() for x in ds.as_numpy_iterator()] for ds in maps] == [want, want]
    assert v.tf_tokenizer is v.tf_tokenizer
    assert plain.tf_tokenizer is not plain.tf_tokenizer  # what seqio does
    again = pickle.loads(pickle.dumps(v))
    assert again == v and again.encode(texts[0]) == want[0]
    it = iter(maps[0])
    next(it)
    path = tf.train.Checkpoint(iterator=it).write(str(tmp_path / "it"))
    resumed = iter(maps[0])
    tf.train.Checkpoint(iterator=resumed).read(path).assert_consumed()
    assert next(resumed).numpy().tolist() == want[1]


def test_host_shards_are_disjoint_and_cover_the_split(registered):
    task = seqio.get_mixture_or_task("t_review_zs_noopt")
    lengths = {"inputs": 64, "targets": 16}

    def texts(shard_info=None):
        ds = task.get_dataset(lengths, split="train", shuffle=True, shard_info=shard_info)
        return [ex["inputs_pretokenized"] for ex in ds.as_numpy_iterator()]

    full = texts()
    shards = [texts(seqio.ShardInfo(index=i, num_shards=2)) for i in range(2)]
    assert len(shards[0]) == len(shards[1]) == 3
    assert sorted(shards[0] + shards[1]) == sorted(full)


def test_split_ratio_cuts_one_file_deterministically_disjoint_and_exact():
    ratio = {"train": 0.7, "validation": 0.2, "test": 0.1}
    assert sources.split_sizes(11, ratio) == {"train": 8, "validation": 2, "test": 1}
    assert sources.split_sizes(100, ratio) == {"train": 70, "validation": 20, "test": 10}
    cut = {s: sources.ratio_split_indices(11, ratio, 3, s) for s in ratio}
    assert sorted(i for part in cut.values() for i in part) == list(range(11))
    assert cut == {s: sources.ratio_split_indices(11, ratio, 3, s) for s in ratio}
    assert cut != {s: sources.ratio_split_indices(11, ratio, 4, s) for s in ratio}
    with pytest.raises(ValueError, match=r"summing to 1"):
        sources.source_from_dict(
            {"type": "jsonl", "splits": "a.jsonl", "split_ratio": {"train": 0.9, "dev": 0.2}}
        )


def test_answer_index_out_of_range_names_the_example(tmp_path):
    (tmp_path / "mc.jsonl").write_text(
        '{"q": "a?", "c": ["x", "y"], "g": 1}\n{"q": "b?", "c": ["x", "y"], "g": 2}\n'
    )
    spec = tasks.load_task_spec(
        {
            "name": "mc_index",
            "cluster": "x",
            "source": {"type": "jsonl", "splits": {"train": str(tmp_path / "mc.jsonl")}},
            "fields": {"question": "q", "choices": "c", "answer": "g"},
            "options_field": "choices",
            "answer_index": True,
            "templates": [{"inputs": "{question}", "targets": "{answer}"}],
        }
    )
    rows = task_examples.iter_prepared(spec, "train")
    assert next(rows) == {"question": "a?", "choices": ["x", "y"], "answer": "y"}
    with pytest.raises(ValueError, match=r"example 1: answer index 2 is out of range"):
        next(rows)


def test_an_unprepared_tfds_source_that_cannot_be_prepared_names_the_fix(tmp_path, monkeypatch):
    """TFDS prepares missing data on first read; when that fails (here: no network) the error
    names the dataset, its folder and the command, not a download traceback."""
    source = sources.SourceSpec(
        type="tfds",
        name="super_glue/rte:1.0.2",
        splits={"train": "train"},
        data_dir=str(tmp_path),
    )

    def no_network(*args, **kwargs):
        raise ConnectionError("Max retries exceeded with url: /rte.zip")

    monkeypatch.setattr(seqio.TfdsDataSource, "get_dataset", no_network)
    folder = tmp_path / "super_glue" / "rte" / "1.0.2"
    with pytest.raises(ValueError) as error:
        next(sources.iter_examples(source, "train"))
    assert str(error.value) == (
        f"TFDS dataset super_glue/rte:1.0.2 in {folder} is not prepared and preparing it "
        "failed (ConnectionError: Max retries exceeded with url: /rte.zip); prepare it with "
        "`tfds build NAME --data_dir DIR` (flan_jax's own builders also need `--imports "
        "flan_jax.data.tfds_qed`), or train without the task"
    )
