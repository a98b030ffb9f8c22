"""HF <-> flan_jax conversion: logits, greedy decodes and round trips against transformers."""

import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax import convert
from flan_jax.cli import convert as cli
from flan_jax.convert import hf
from flan_jax.model.decoding import DecodeConfig

torch = pytest.importorskip("torch", reason="needs the `hf` extra (torch)")
transformers = pytest.importorskip("transformers", reason="needs the `hf` extra (transformers)")

VOCAB = 128
T5_SIZES = dict(vocab_size=VOCAB, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2)
T5_LAYOUTS = {
    # T5 v1.1 / Flan-T5: gated tanh-GELU, untied unscaled head
    "t5_v1_1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    # original T5: ReLU, head tied to the embedding and scaled by d_model ** -0.5
    "t5_original": dict(feed_forward_proj="relu"),
}


def _randomize_norms(model):
    """HF initialises norms to 1; random scales make a transposition or swap visible."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)


def _save_t5(root, layout):
    torch.manual_seed(0)
    config = transformers.T5Config(
        **T5_SIZES, **T5_LAYOUTS[layout], dropout_rate=0.0, decoder_start_token_id=0
    )
    model = transformers.T5ForConditionalGeneration(config).eval()
    _randomize_norms(model)
    if layout == "t5_v1_1":  # transformers 5 ties lm_head at init; give it its own weights
        model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 32) * 0.5)
    else:  # sharper logits, and an EOS that greedy decoding reaches
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" not in name and name != "shared.weight":
                    p.mul_(3.0)
            model.shared.weight[1] *= 2.0
    path = str(root / layout)
    model.save_pretrained(path)
    return path


def _save_llama(root):
    torch.manual_seed(1)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=96, num_hidden_layers=2, rope_theta=5000.0, max_position_embeddings=64,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    _randomize_norms(model)
    with torch.no_grad():  # HF's 0.02-std init gives near-uniform logits; sharpen them
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(10.0)
    path = str(root / "llama")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    dirs = {layout: _save_t5(root, layout) for layout in T5_LAYOUTS}
    dirs["llama"] = _save_llama(root)
    return dirs


@functools.cache
def _convert(path):
    """hf.hf_to_flan, once per HF dir (tests only read the result)."""
    return hf.hf_to_flan(path)


def _load_hf(path):
    with open(os.path.join(path, "config.json")) as f:
        seq2seq = json.load(f)["model_type"] == "t5"
    cls = transformers.AutoModelForSeq2SeqLM if seq2seq else transformers.AutoModelForCausalLM
    return cls.from_pretrained(path, local_files_only=True).eval()


ENC = np.array([[5, 6, 7, 8, 9, 1, 0, 0], [10, 11, 1, 0, 0, 0, 0, 0]], np.int32)
DEC_IN = np.array([[0, 12, 13, 14, 15, 0], [0, 16, 17, 0, 0, 0]], np.int32)
DEC_TGT = np.array([[12, 13, 14, 15, 1, 0], [16, 17, 1, 0, 0, 0]], np.int32)


def _t5_hf_logits(model):
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ENC, dtype=torch.long),
            attention_mask=torch.tensor(ENC > 0, dtype=torch.long),
            decoder_input_ids=torch.tensor(DEC_IN, dtype=torch.long),
            decoder_attention_mask=torch.tensor(DEC_TGT > 0, dtype=torch.long),
        )
    return out.logits.numpy()


TOKENS = np.array([[3, 17, 29, 41, 53, 65, 77, 89], [5, 9, 13, 0, 0, 0, 0, 0]], np.int32)


def _llama_hf_logits(model):
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(TOKENS, dtype=torch.long),
            attention_mask=torch.tensor(TOKENS > 0, dtype=torch.long),
        )
    return out.logits.numpy()


def _flan_logits(path):
    params, architecture, cfg, _ = _convert(path)
    model = convert.make_model(architecture, cfg)
    if architecture == "encoder_decoder":
        keys = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")
        batch = dict(zip(keys, map(jnp.asarray, (ENC, DEC_IN, DEC_TGT))))
        real = DEC_TGT > 0
    else:
        batch = {"decoder_input_tokens": TOKENS, "decoder_target_tokens": TOKENS}
        real = TOKENS > 0
    return np.asarray(jax.jit(model._logits)(params, batch, None)), real


@pytest.mark.parametrize("layout", ["t5_v1_1", "t5_original", "llama"])
def test_logits_match_hf_on_padded_batch(hf_dirs, layout):
    hf_model = _load_hf(hf_dirs[layout])
    want = _t5_hf_logits(hf_model) if "t5" in layout else _llama_hf_logits(hf_model)
    got, real = _flan_logits(hf_dirs[layout])
    assert real.sum() >= 8 and not real.all()
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=0)
    assert np.abs(want[real]).max() > 1.0, "logits too small for the check to mean anything"


def test_converted_configs(hf_dirs):
    _, _, v11, _ = _convert(hf_dirs["t5_v1_1"])
    assert (v11.mlp_activations, v11.logits_via_embedding) == (("gelu", "linear"), False)
    _, _, orig, _ = _convert(hf_dirs["t5_original"])
    assert (orig.mlp_activations, orig.logits_via_embedding) == (("relu",), True)
    params, arch, llama, _ = _convert(hf_dirs["llama"])
    assert arch == "decoder_only"
    assert (llama.num_heads, llama.kv_heads, llama.head_dim, llama.rope_theta) == (4, 2, 16, 5000.0)
    assert params["decoder"]["layers_0"]["self_attention"]["key"]["kernel"].shape == (64, 32)


@pytest.mark.parametrize("layout", ["t5_v1_1", "t5_original"])
def test_t5_greedy_decodes_match_hf_generate(hf_dirs, layout):
    length = 10
    with torch.no_grad():
        want = _load_hf(hf_dirs[layout]).generate(
            input_ids=torch.tensor(ENC, dtype=torch.long),
            attention_mask=torch.tensor(ENC > 0, dtype=torch.long),
            do_sample=False, num_beams=1, max_new_tokens=length, min_length=0,
        ).numpy()[:, 1:]  # fmt: skip
    want = np.pad(want, ((0, 0), (0, length - want.shape[1])))
    assert len(np.unique(want)) > 3, f"degenerate decodes test nothing: {want}"
    if layout == "t5_original":
        assert (want[0] == 1).any(), f"EOS (then 0) expected in row 0: {want[0]}"
    params, architecture, cfg, _ = _convert(hf_dirs[layout])
    model = convert.make_model(architecture, cfg)
    decode = DecodeConfig(method="greedy", max_decode_len=length, eos_id=1)
    batch = {"encoder_input_tokens": jnp.asarray(ENC)}
    got = jax.jit(lambda p, b: model.predict_batch(p, b, decode=decode))(params, batch)
    np.testing.assert_array_equal(got, want)


def test_llama_greedy_decodes_match_hf_generate(hf_dirs):
    length, prompt_len = 8, 5
    prompts = [[3, 17, 29, 41, 53], [5, 9, 13]]
    left = np.zeros((2, prompt_len), np.int64)
    for i, p in enumerate(prompts):
        left[i, prompt_len - len(p) :] = p
    with torch.no_grad():
        want = _load_hf(hf_dirs["llama"]).generate(
            input_ids=torch.tensor(left), attention_mask=torch.tensor(left > 0, dtype=torch.long),
            do_sample=False, num_beams=1, max_new_tokens=length, min_length=0, pad_token_id=0,
        ).numpy()[:, prompt_len:]  # fmt: skip
    want = np.pad(want, ((0, 0), (0, length - want.shape[1])))
    assert len(np.unique(want)) > 8, f"degenerate decodes test nothing: {want}"
    params, architecture, cfg, hf_config = _convert(hf_dirs["llama"])
    model = convert.make_model(architecture, cfg)
    right = np.zeros((2, prompt_len), np.int32)
    for i, p in enumerate(prompts):
        right[i, : len(p)] = p
    batch = {
        "decoder_input_tokens": right,
        "decoder_causal_attention": (right > 0).astype(np.int32),
    }
    decode = DecodeConfig(method="greedy", max_decode_len=length, eos_id=hf_config["eos_token_id"])
    got = jax.jit(lambda p, b: model.predict_batch(p, b, decode=decode))(params, batch)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("layout", ["t5_v1_1", "t5_original", "llama"])
def test_cli_round_trip_reloads_in_transformers_with_identical_logits(hf_dirs, layout, tmp_path):
    flan_dir, back_dir = str(tmp_path / "flan"), str(tmp_path / "back")
    assert cli.main(["hf-to-flan", hf_dirs[layout], flan_dir]) == 0
    assert sorted(os.listdir(flan_dir)) == ["default", "flan_model.json"]
    params, _, _, _ = _convert(hf_dirs[layout])
    loaded = convert.load_params(flan_dir)
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    assert cli.main(["flan-to-hf", flan_dir, back_dir]) == 0
    logits = _t5_hf_logits if "t5" in layout else _llama_hf_logits
    np.testing.assert_array_equal(logits(_load_hf(back_dir)), logits(_load_hf(hf_dirs[layout])))


def test_unknown_architecture_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match=r"'GPT2LMHeadModel' is not supported.*LlamaForCausalLM"):
        hf.hf_to_flan(str(tmp_path))


def test_shape_mismatch_names_first_tensor_and_both_shapes(hf_dirs, tmp_path):
    bad = str(tmp_path / "bad")
    shutil.copytree(hf_dirs["t5_v1_1"], bad)
    config = json.loads(open(os.path.join(bad, "config.json")).read())
    config["d_ff"] = 48
    open(os.path.join(bad, "config.json"), "w").write(json.dumps(config))
    with pytest.raises(ValueError) as err:
        hf.hf_to_flan(bad)
    message = str(err.value)
    assert "'encoder.block.0.layer.1.DenseReluDense.wi_0.weight' has shape (64, 32)" in message
    assert "encoder/layers_0/mlp/wi_0/kernel (32, 64)) but config.json implies (32, 48)" in message
