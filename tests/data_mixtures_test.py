"""Mixtures: caps, temperature, weights, sub-mixtures, held-out clusters, shares after packing."""

import collections

import numpy as np
import pytest
import seqio

from flan_jax.data import mixtures, opt_iml, tasks

SIZES = {"m_a": (100, "x"), "m_b": (300, "y"), "m_c": (900, "z"), "m_d": (40, "z")}


def rows(split: str, tag: str, n: int) -> list[dict]:
    return [{"q": str(i % 10), "answer": tag} for i in range(n)]


def task_spec(name: str, n: int, cluster: str, **kw) -> dict:
    return {
        "name": name,
        "cluster": cluster,
        "source": {
            "type": "function",
            "fn": "data_mixtures_test:rows",
            "splits": ["train"],
            "args": {"tag": name[-1].upper(), "n": n},
        },
        "fields": ["q", "answer"],
        "templates": [{"inputs": "{q}", "targets": "{answer}{q}"}],
        "formats": ["zs_noopt"],
        "vocabulary": "byte",
        **kw,
    }


@pytest.fixture(scope="module", autouse=True)
def registered():
    for name, (n, cluster) in SIZES.items():
        tasks.register_task_spec(task_spec(name, n, cluster))
    yield
    for name in mixtures.registered_mixtures():
        if name.startswith("mx_") and name in mixtures.registered_mixtures():
            mixtures.unregister_mixture(name)
    for name in SIZES:
        tasks.unregister_task_spec(name)


def test_examples_proportional_with_cap_and_temperature():
    spec = mixtures.MixtureSpec(name="mx_cap", members=("m_a", "m_b", "m_c"), cap=500)
    assert mixtures.flat_rates(spec) == {
        "m_a_zs_noopt": 100.0,
        "m_b_zs_noopt": 300.0,
        "m_c_zs_noopt": 500.0,
    }
    hot = mixtures.MixtureSpec(name="mx_t", members=("m_a", "m_c"), cap=400, temperature=2.0)
    assert mixtures.flat_rates(hot) == {"m_a_zs_noopt": 10.0, "m_c_zs_noopt": 20.0}


def test_weights_and_sub_mixtures():
    assert mixtures.register_mixture_spec(
        {"name": "mx_sub", "members": ["m_a", "m_d"], "cap": 3000}
    ) == ["mx_sub"]
    parent = mixtures.MixtureSpec(
        name="mx_parent",
        cap=200,
        members=("m_b", {"name": "m_c", "weight": 50}, {"name": "mx_sub", "weight": 70}),
    )
    # mx_sub's weight 70 is split 100:40 over its tasks; m_b is capped at 200.
    assert mixtures.flat_rates(parent) == pytest.approx(
        {"m_b_zs_noopt": 200.0, "m_c_zs_noopt": 50.0, "m_a_zs_noopt": 50.0, "m_d_zs_noopt": 20.0}
    )
    unweighted = mixtures.MixtureSpec(name="mx_p2", members=("m_b", "mx_sub"), cap=200)
    assert mixtures.flat_rates(unweighted) == {
        "m_b_zs_noopt": 200.0,
        "m_a_zs_noopt": 100.0,
        "m_d_zs_noopt": 40.0,
    }


def test_held_out_clusters_and_idempotence():
    spec = {"name": "mx_all", "members": ["m_a", "m_b", "m_c", "m_d"], "held_out": "all"}
    names = mixtures.register_mixture_spec(spec)
    assert names == ["mx_all", "mx_all_minus_x", "mx_all_minus_y", "mx_all_minus_z"]
    assert mixtures.register_mixture_spec(spec) == names
    assert mixtures.mixture_rates("mx_all_minus_z") == {
        "m_a_zs_noopt": 100.0,
        "m_b_zs_noopt": 300.0,
    }
    tasks_of = lambda n: sorted(t.name for t in seqio.get_mixture_or_task(n).tasks)
    assert tasks_of("mx_all_minus_x") == ["m_b_zs_noopt", "m_c_zs_noopt", "m_d_zs_noopt"]
    with pytest.raises(ValueError, match="a different mixture named 'mx_all'"):
        mixtures.register_mixture_spec(dict(spec, cap=10))


def test_benchmark_proportions_as_ratio_string_or_mapping():
    """OPT-IML writes benchmark proportions as "4/2/..."; each becomes its member's weight
    (normalised to sum 1), split over the member's tasks like any sub-mixture weight."""
    mixtures.register_mixture_spec({"name": "mx_bench_z", "members": ["m_c", "m_d"]})
    spec = mixtures.MixtureSpec(
        name="mx_bench", members=("m_a", "m_b", "mx_bench_z"), proportions="1/2/5"
    )
    assert [m.weight for m in spec.members] == [0.125, 0.25, 0.625]
    # mx_bench_z's 0.625 is split 900:40 between m_c and m_d
    assert mixtures.flat_rates(spec) == pytest.approx(
        {
            "m_a_zs_noopt": 0.125,
            "m_b_zs_noopt": 0.25,
            "m_c_zs_noopt": 0.625 * 900 / 940,
            "m_d_zs_noopt": 0.625 * 40 / 940,
        }
    )
    as_map = mixtures.MixtureSpec(
        name="mx_bench", members=("m_a", "m_b", "mx_bench_z"),
        proportions={"mx_bench_z": 5, "m_a": 1, "m_b": 2},
    )  # fmt: skip
    assert as_map == spec


@pytest.mark.parametrize(
    "proportions, match",
    [
        ("4/2", r"proportions '4/2' has 2 numbers for 3 members \['m_a', 'm_b', 'm_c'\]"),
        ("4/x/1", r"must be numbers separated by '/'"),
        ("4/0/1", r"must be > 0"),
        ({"m_a": 1, "m_b": 1}, r"missing \['m_c'\], not members \[\]"),
    ],
)
def test_bad_proportions(proportions, match):
    with pytest.raises(ValueError, match=match):
        mixtures.MixtureSpec(name="mx_p", members=("m_a", "m_b", "m_c"), proportions=proportions)


def test_opt_iml_three_evaluation_splits():
    """Cluster x fully held out, task m_d (cluster z, seen through m_c) partially held out."""
    names = mixtures.register_mixture_spec(
        {
            "name": "mx_iml",
            "members": ["m_a", "m_b", "m_c", "m_d"],
            "opt_iml_splits": {"held_out_clusters": ["x"], "held_out_tasks": ["m_d"]},
        }
    )
    assert names == [
        "mx_iml",
        "mx_iml_train",
        "mx_iml_fully_held_out",
        "mx_iml_partially_held_out",
        "mx_iml_fully_supervised",
    ]
    tasks_of = lambda n: sorted(t.name for t in seqio.get_mixture_or_task(n).tasks)
    assert tasks_of("mx_iml_train") == ["m_b_zs_noopt", "m_c_zs_noopt"]
    assert tasks_of("mx_iml_fully_held_out") == ["m_a_zs_noopt"]
    assert tasks_of("mx_iml_partially_held_out") == ["m_d_zs_noopt"]
    assert tasks_of("mx_iml_fully_supervised") == tasks_of("mx_iml_train")
    assert mixtures.mixture_rates("mx_iml_train") == {"m_b_zs_noopt": 300.0, "m_c_zs_noopt": 900.0}
    train = seqio.get_mixture_or_task("mx_iml_train")
    assert [train.get_rate(t) for t in train.tasks] == [300.0, 900.0]


def test_shipped_opt_iml_tiny_keeps_its_benchmark_proportions():
    import flan_jax.registry  # noqa: F401

    rates = mixtures.mixture_rates("opt_iml_tiny_train")
    total = sum(rates.values())
    group = {
        t.name: g
        for g in ("language", "reasoning", "symbolic")
        for t in seqio.get_mixture_or_task(f"opt_iml_tiny_{g}").tasks
    }
    shares = collections.Counter()
    for t, r in rates.items():
        shares[group[t]] += r / total
    assert shares == pytest.approx({"language": 0.2, "reasoning": 0.5, "symbolic": 0.3})
    clusters = lambda n: {opt_iml.cluster_of(t.name) for t in seqio.get_mixture_or_task(n).tasks}
    assert "nli" not in clusters("opt_iml_tiny_train") and "sentiment" in clusters(
        "opt_iml_tiny_train"
    )
    assert clusters("opt_iml_tiny_fully_held_out") == {"nli"}
    partial = seqio.get_mixture_or_task("opt_iml_tiny_partially_held_out").tasks
    assert {opt_iml.base_task(t.name) for t in partial} == {"tiny_restaurant_reviews"}


def test_opt_iml_splits_refuse_shared_sources_and_unseen_clusters():
    twin = task_spec("m_twin", 900, "y")
    twin["source"]["args"] = {"tag": "C", "n": 900}  # m_c's data under another name
    tasks.register_task_spec(twin)
    try:
        with pytest.raises(ValueError, match="reads the same data as a training task"):
            mixtures.register_mixture_spec(
                {
                    "name": "mx_leak",
                    "members": ["m_a", "m_b", "m_c", "m_twin"],
                    "opt_iml_splits": {"held_out_tasks": ["m_twin"]},
                }
            )
    finally:
        tasks.unregister_task_spec("m_twin")
    with pytest.raises(ValueError, match="held-out task 'm_a' \\(cluster 'x'\\) must belong"):
        mixtures.register_mixture_spec(
            {
                "name": "mx_unseen",
                "members": ["m_a", "m_b"],
                "opt_iml_splits": {"held_out_tasks": ["m_a"]},
            }
        )
    for name in ("mx_leak", "mx_unseen", "mx_leak_train", "mx_unseen_train"):
        assert name not in seqio.MixtureRegistry.names()


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"members": ["m_a"], "cap": 0}, "cap must be a positive int, got 0"),
        ({"members": ["m_a"], "cap": -5}, "cap must be a positive int, got -5"),
        (
            {"members": ["m_a", "m_b"], "held_out": ["w"]},
            r"held-out cluster 'w' does not exist; its tasks have clusters \['x', 'y'\]",
        ),
        ({"members": ["m_a", "m_bb"]}, r"unknown task or mixture 'm_bb'; closest: \['m_b'"),
        ({"members": []}, "`members:` is empty"),
        ({"members": [{"name": "m_a", "weight": 0}]}, "weight must be > 0, got 0"),
        ({"members": ["m_a"], "weights": [1]}, "unknown key 'weights'"),
    ],
)
def test_bad_mixtures_register_nothing(spec, match):
    with pytest.raises(ValueError, match=match):
        mixtures.register_mixture_spec({"name": "mx_bad", **spec})
    assert "mx_bad" not in seqio.MixtureRegistry.names()


def test_recorded_num_examples_without_data(tmp_path):
    spec = task_spec("m_file", 0, "x", num_examples={"train": 1234})
    spec["source"] = {"type": "jsonl", "splits": {"train": str(tmp_path / "absent.jsonl")}}
    tasks.register_task_spec(spec)
    try:
        assert mixtures.task_rate("m_file_zs_noopt", cap=3000) == 1234.0
        assert mixtures.task_rate("m_file_zs_noopt", cap=1000) == 1000.0
    finally:
        tasks.unregister_task_spec("m_file")


def segment_tags(tokens: np.ndarray, segments: np.ndarray) -> list[str]:
    """The first token of every packed segment, decoded (it is the task's tag letter)."""
    starts = (segments > 0) & np.concatenate(
        [np.ones_like(segments[:, :1], bool), segments[:, 1:] != segments[:, :-1]], axis=1
    )
    return [chr(t - 3) for t in tokens[starts]]


@pytest.mark.parametrize(
    "converter, lengths, key",
    [
        (seqio.EncDecFeatureConverter(pack=True), {"inputs": 64, "targets": 64}, "decoder"),
        (seqio.DecoderFeatureConverter(pack=True), {"targets": 64}, "decoder"),
    ],
    ids=["encdec", "decoder"],
)
def test_shares_after_packing_match_rates(converter, lengths, key):
    mixtures.register_mixture_spec(
        {"name": "mx_pack", "members": ["m_a", "m_b", "m_c"], "cap": 500}
    )
    ds = seqio.get_dataset(
        "mx_pack", lengths, converter, dataset_split="train", shuffle=True, seed=7, num_epochs=None
    )
    counts, total = collections.Counter(), 0
    for batch in ds.batch(128).as_numpy_iterator():
        if key == "decoder" and "inputs" not in lengths:
            tokens = batch["decoder_target_tokens"]
        else:
            tokens = batch["decoder_target_tokens"]
        tags = segment_tags(tokens, batch["decoder_segment_ids"])
        counts.update(tags)
        total += len(tags)
        if total >= 20_000:
            break
    shares = {tag: counts[tag] / total for tag in "ABC"}
    expected = {"A": 100 / 900, "B": 300 / 900, "C": 500 / 900}
    for tag in "ABC":
        assert abs(shares[tag] - expected[tag]) < 0.02, (tag, shares, expected)
    # Packing really happened: several examples share a row.
    assert batch["decoder_segment_ids"].max() >= 2


def test_plain_seqio_members_are_looked_up_without_the_unknown_name_search(monkeypatch):
    """Cluster, base name, source and rate of a plain seqio task come from an O(1) lookup: the
    closest-names error (difflib over every registered name) cost ~0.2 s per task per lookup,
    ~36 s to register a 100-task mixture of plain tasks (BENCHMARKS.md "Mixture scale")."""
    vocab = seqio.ByteVocabulary()
    features = {k: seqio.Feature(vocab) for k in ("inputs", "targets")}
    plain = ["mx_plain_p", "mx_plain_q"]
    for name, n in zip(plain, (50, 700), strict=True):
        source = seqio.FunctionDataSource(
            lambda split, shuffle_files: None, splits=["train"], num_input_examples={"train": n}
        )
        seqio.TaskRegistry.add(name, source, output_features=features)
    try:
        assert tasks.find_task_spec("m_a_zs_noopt").name == "m_a"
        assert tasks.find_task_spec("m_a").cluster == "x"
        assert tasks.find_task_spec("mx_plain_p") is None
        with pytest.raises(ValueError, match=r"unknown task 'm_a_zs_nopt'; closest: \['m_a_zs"):
            tasks.get_task_spec("m_a_zs_nopt")
        assert [opt_iml.cluster_of(t) for t in ("mx_plain_p", "m_c_zs_noopt")] == [None, "z"]
        assert [opt_iml.base_task(t) for t in ("mx_plain_p", "m_c_zs_noopt")] == [
            "mx_plain_p",
            "m_c",
        ]
        assert opt_iml.source_key("mx_plain_q") == ("seqio", "mx_plain_q")

        def searched(*args):
            raise AssertionError(f"unknown-name search for {args[1]!r}")

        monkeypatch.setattr(tasks, "unknown_name_error", searched)
        assert mixtures.register_mixture_spec(
            {"name": "mx_plain", "members": [*plain, "m_a"], "cap": 500, "held_out": "all"}
        ) == ["mx_plain", "mx_plain_minus_x"]
        assert mixtures.mixture_rates("mx_plain") == {
            "mx_plain_p": 50.0,
            "mx_plain_q": 500.0,
            "m_a_zs_noopt": 100.0,
        }
        assert mixtures.mixture_rates("mx_plain_minus_x") == {
            "mx_plain_p": 50.0,
            "mx_plain_q": 500.0,
        }
    finally:
        mixtures.unregister_mixture("mx_plain")
        for name in plain:
            seqio.TaskRegistry.remove(name)


def _template_types(task: str) -> list[str]:
    ds = seqio.get_mixture_or_task(task).source.get_dataset("train", shuffle=False)
    return [ex["_template_type"].decode() for ex in ds.as_numpy_iterator()]


def test_mixture_inversion_share_registers_variants_of_its_tasks():
    inverted = {"inputs": "give a q for {answer}", "targets": "{q}", "inverted": True}
    spec = task_spec(
        "m_inv", 8, "w", templates=[{"inputs": "{q}", "targets": "{answer}"}, inverted]
    )
    tasks.register_task_spec(spec)
    try:
        # FLAN 2021's rotation in the task itself: every second example is inverted
        assert _template_types("m_inv_zs_noopt") == ["zs_noopt", "zs_noopt_inverted"] * 4
        names = mixtures.register_mixture_spec(
            {"name": "mx_fwd", "members": ["m_inv", "m_a"], "inversion_share": 0}
        )
        assert names == ["mx_fwd"]
        assert mixtures.mixture_rates("mx_fwd") == {
            "m_inv_fwd_zs_noopt": 8.0,
            "m_a_zs_noopt": 100.0,  # no inverted templates: as it is
        }
        assert _template_types("m_inv_fwd_zs_noopt") == ["zs_noopt"] * 8
        assert tasks.get_task_spec("m_inv_fwd").source == tasks.get_task_spec("m_inv").source
        # a variant member maps to the variant of the derived spec; idempotent
        mixtures.register_mixture_spec(
            {"name": "mx_all_inv", "members": ["m_inv_zs_noopt"], "inversion_share": 1.0}
        )
        assert _template_types("m_inv_inv100_zs_noopt") == ["zs_noopt_inverted"] * 8
        assert mixtures.register_mixture_spec(
            {"name": "mx_fwd", "members": ["m_inv", "m_a"], "inversion_share": 0}
        ) == ["mx_fwd"]
        with pytest.raises(ValueError, match=r"inversion_share must be in \[0, 1\]"):
            mixtures.register_mixture_spec(
                {"name": "mx_bad", "members": ["m_a"], "inversion_share": 2}
            )
        # a share > 0 needs inverted templates (m_a has none)
        with pytest.raises(ValueError, match="needs templates with `inverted: true`"):
            mixtures.register_mixture_spec(
                {"name": "mx_bad", "members": ["m_a"], "inversion_share": 0.5}
            )
    finally:
        for name in ("mx_fwd", "mx_all_inv"):
            mixtures.unregister_mixture(name)
        for name in ("m_inv", "m_inv_fwd", "m_inv_inv100"):
            tasks.unregister_task_spec(name)
