"""OPT, Qwen2, Mistral, mT5 and UMT5 against transformers: logits, greedy decodes, round trips.

Random tiny configs with shapes unlike tests/convert_hf_test.py: odd head counts (5, 3),
vocabularies that are not a multiple of 8, OPT-350m's post-LN and project_in/out, a Mistral
sliding window shorter than the sequences.
"""

import functools
import json
import os

import jax
import numpy as np
import pytest

from flan_jax import convert
from flan_jax.cli import convert as cli
from flan_jax.convert import hf
from flan_jax.model.decoding import DecodeConfig

torch = pytest.importorskip("torch", reason="needs the `hf` extra (torch)")
transformers = pytest.importorskip("transformers", reason="needs the `hf` extra (transformers)")

VOCAB = 101
OPT = dict(
    vocab_size=VOCAB, hidden_size=40, num_attention_heads=5, ffn_dim=56, num_hidden_layers=2,
    max_position_embeddings=24, dropout=0.0, attention_dropout=0.0,
)  # fmt: skip
LLAMA_LIKE = dict(
    vocab_size=VOCAB, hidden_size=36, num_attention_heads=3, num_key_value_heads=3,
    intermediate_size=44, num_hidden_layers=2, max_position_embeddings=64,
)  # fmt: skip
T5_LIKE = dict(
    vocab_size=VOCAB, d_model=30, d_kv=10, num_heads=3, d_ff=44, num_layers=2, dropout_rate=0.0,
    decoder_start_token_id=0, tie_word_embeddings=False,  # (transformers 5 then unscales UMT5)
)  # fmt: skip
FAMILIES = {
    "opt": lambda: transformers.OPTForCausalLM(transformers.OPTConfig(**OPT)),
    # OPT-350m's layout: post-LN, embeddings of width 24 projected in and out
    "opt_350m": lambda: transformers.OPTForCausalLM(
        transformers.OPTConfig(**OPT, do_layer_norm_before=False, word_embed_proj_dim=24)
    ),
    "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**LLAMA_LIKE)),
    "mistral": lambda: transformers.MistralForCausalLM(
        transformers.MistralConfig(
            **{**LLAMA_LIKE, "num_key_value_heads": 1}, sliding_window=4, head_dim=12
        )  # fmt: skip
    ),
    "mt5": lambda: transformers.MT5ForConditionalGeneration(transformers.MT5Config(**T5_LIKE)),
    # UMT5: a relative position bias table in every layer
    "umt5": lambda: transformers.UMT5ForConditionalGeneration(
        transformers.UMT5Config(**T5_LIKE, relative_attention_num_buckets=8)
    ),
}
SEQ2SEQ = ("mt5", "umt5")
DECODER_ONLY = ("opt", "opt_350m", "qwen2", "mistral")


# Multipliers of HF's 0.02-std init (by name part; first match wins) that give sharp logits and
# varied greedy decodes; OPT-350m's final post-LN needs strong MLPs and weak attention for that.
SHARPEN = {
    "opt": (("embed_tokens", 3.0), ("embed_positions", 3.0), ("", 10.0)),
    "opt_350m": (
        ("embed_tokens", 50.0),
        ("embed_positions", 3.0),
        ("fc", 10.0),
        ("self_attn", 1.0),
        ("", 10.0),
    ),  # fmt: skip
    "qwen2": (("", 10.0),),
    "mistral": (("", 10.0),),
    "mt5": (("", 1.0),),
    "umt5": (("relative_attention_bias", 5.0), ("", 1.0)),
}


def _sharpen(model, family):
    """Random norms and biases (HF's ones and zeros hide swaps), then SHARPEN's multipliers."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.uniform_(-0.5, 0.5)
            else:
                p.mul_(next(f for part, f in SHARPEN[family] if part in name))


def _save(root, family):
    torch.manual_seed(3)
    model = FAMILIES[family]().eval()
    _sharpen(model, family)
    if family in SEQ2SEQ:  # real mT5 / UMT5 checkpoints have their own lm_head
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 30) * 0.5)
    path = str(root / family)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_families")
    return {family: _save(root, family) for family in FAMILIES}


@functools.cache
def _convert(path):
    return hf.hf_to_flan(path)


def _load_hf(path):
    with open(os.path.join(path, "config.json")) as f:
        seq2seq = json.load(f)["model_type"] in SEQ2SEQ
    cls = transformers.AutoModelForSeq2SeqLM if seq2seq else transformers.AutoModelForCausalLM
    return cls.from_pretrained(path, local_files_only=True).eval()


# right-padded ragged batch; 10 tokens > Mistral's window of 4; no id 0 (flan's padding)
TOKENS = np.array(
    [[3, 17, 29, 41, 53, 65, 77, 89, 97, 100], [5, 9, 13, 44, 0, 0, 0, 0, 0, 0]], np.int32
)
ENC = np.array([[5, 6, 7, 8, 9, 1, 0, 0], [10, 11, 1, 0, 0, 0, 0, 0]], np.int32)
DEC_IN = np.array([[0, 12, 13, 14, 15, 0], [0, 16, 17, 0, 0, 0]], np.int32)
DEC_TGT = np.array([[12, 13, 14, 15, 1, 0], [16, 17, 1, 0, 0, 0]], np.int32)


def _hf_logits(model, family):
    t = functools.partial(torch.tensor, dtype=torch.long)
    with torch.no_grad():
        if family in SEQ2SEQ:
            return model(
                input_ids=t(ENC), attention_mask=t(ENC > 0), decoder_input_ids=t(DEC_IN),
                decoder_attention_mask=t(DEC_TGT > 0),
            ).logits.numpy()  # fmt: skip
        return model(input_ids=t(TOKENS), attention_mask=t(TOKENS > 0)).logits.numpy()


def _flan_logits(path, family):
    params, architecture, cfg, _ = _convert(path)
    model = convert.make_model(architecture, cfg)
    if family in SEQ2SEQ:
        keys = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")
        batch, real = dict(zip(keys, (ENC, DEC_IN, DEC_TGT))), DEC_TGT > 0
    else:
        batch, real = {"decoder_input_tokens": TOKENS, "decoder_target_tokens": TOKENS}, TOKENS > 0
    return np.asarray(jax.jit(model._logits)(params, batch, None)), real


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_hf_on_ragged_batch(hf_dirs, family):
    want = _hf_logits(_load_hf(hf_dirs[family]), family)
    got, real = _flan_logits(hf_dirs[family], family)
    assert not real.all()
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=0)
    assert np.abs(want[real]).max() > 1.0, "logits too small for the check to mean anything"


def test_converted_configs(hf_dirs):
    params, arch, opt, _ = _convert(hf_dirs["opt"])
    assert (arch, opt.position_embedding, opt.position_offset, opt.norm_type) == (
        "decoder_only", "learned", 2, "layernorm"
    )  # fmt: skip
    assert (opt.use_bias, opt.logits_via_embedding, opt.scale_tied_logits) == (True, True, False)
    assert params["decoder"]["position_embedder"]["embedding"].shape == (24 + 2, 40)
    assert params["decoder"]["layers_0"]["self_attention"]["query"]["bias"].shape == (40,)
    assert "logits_dense" not in params["decoder"]
    _, _, post, _ = _convert(hf_dirs["opt_350m"])
    assert (post.post_layer_norm, post.embed_proj_dim, post.model_width) == (True, 24, 24)
    _, _, qwen, _ = _convert(hf_dirs["qwen2"])
    assert (qwen.qkv_bias, qwen.use_bias) == (True, False)
    _, _, mistral, _ = _convert(hf_dirs["mistral"])
    assert (mistral.sliding_window, mistral.kv_heads, mistral.head_dim) == (4, 1, 12)
    params, _, umt5, _ = _convert(hf_dirs["umt5"])
    assert umt5.relpos_per_layer and "relpos_bias" not in params["encoder"]
    assert params["decoder"]["layers_1"]["relpos_bias"]["rel_embedding"].shape == (3, 8)
    _, arch, mt5, _ = _convert(hf_dirs["mt5"])
    assert (arch, mt5.vocab_size, mt5.mlp_activations) == (
        "encoder_decoder",
        101,
        ("gelu", "linear"),
    )


@pytest.mark.parametrize("family", DECODER_ONLY)
def test_greedy_decodes_match_hf_generate(hf_dirs, family):
    length, prompt_len = 8, 5
    prompts = [[3, 17, 29, 41, 53], [5, 9, 13]]
    left = np.full((2, prompt_len), 1, np.int64)  # OPT's pad id; masked out anyway
    for i, p in enumerate(prompts):
        left[i, prompt_len - len(p) :] = p
    mask = np.zeros_like(left)
    mask[0], mask[1, prompt_len - 3 :] = 1, 1
    with torch.no_grad():
        want = _load_hf(hf_dirs[family]).generate(
            input_ids=torch.tensor(left), attention_mask=torch.tensor(mask),
            do_sample=False, num_beams=1, max_new_tokens=length, min_length=0, pad_token_id=1,
            eos_token_id=None,
        ).numpy()[:, prompt_len:]  # fmt: skip
    assert len(np.unique(want)) > 6, f"degenerate decodes test nothing: {want}"
    params, architecture, cfg, _ = _convert(hf_dirs[family])
    model = convert.make_model(architecture, cfg)
    right = np.zeros((2, prompt_len), np.int32)
    for i, p in enumerate(prompts):
        right[i, : len(p)] = p
    batch = {
        "decoder_input_tokens": right,
        "decoder_causal_attention": (right > 0).astype(np.int32),
    }
    decode = DecodeConfig(method="greedy", max_decode_len=length, eos_id=VOCAB + 1)
    got = jax.jit(lambda p, b: model.predict_batch(p, b, decode=decode))(params, batch)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("family", SEQ2SEQ)
def test_seq2seq_greedy_decodes_match_hf_generate(hf_dirs, family):
    length = 10
    with torch.no_grad():
        want = _load_hf(hf_dirs[family]).generate(
            input_ids=torch.tensor(ENC, dtype=torch.long),
            attention_mask=torch.tensor(ENC > 0, dtype=torch.long),
            do_sample=False, num_beams=1, max_new_tokens=length, min_length=0, eos_token_id=None,
        ).numpy()[:, 1:]  # fmt: skip
    assert len(np.unique(want)) > 5, f"degenerate decodes test nothing: {want}"
    params, architecture, cfg, _ = _convert(hf_dirs[family])
    model = convert.make_model(architecture, cfg)
    decode = DecodeConfig(method="greedy", max_decode_len=length, eos_id=VOCAB + 1)
    batch = {"encoder_input_tokens": ENC}
    got = jax.jit(lambda p, b: model.predict_batch(p, b, decode=decode))(params, batch)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cli_round_trip_reloads_in_transformers_with_identical_logits(hf_dirs, family, tmp_path):
    flan_dir, back_dir = str(tmp_path / "flan"), str(tmp_path / "back")
    assert cli.main(["hf-to-flan", hf_dirs[family], flan_dir]) == 0
    assert cli.main(["flan-to-hf", flan_dir, back_dir]) == 0
    back = _load_hf(back_dir)
    assert (
        type(back).__name__ == json.load(open(f"{hf_dirs[family]}/config.json"))["architectures"][0]
    )
    np.testing.assert_array_equal(
        _hf_logits(back, family), _hf_logits(_load_hf(hf_dirs[family]), family)
    )


def test_export_without_hf_config_infers_opt(hf_dirs, tmp_path):
    params, architecture, cfg, _ = _convert(hf_dirs["opt_350m"])
    hf.flan_to_hf(params, architecture, cfg, str(tmp_path))
    back = _load_hf(str(tmp_path))
    assert type(back).__name__ == "OPTForCausalLM"
    np.testing.assert_array_equal(
        _hf_logits(back, "opt"), _hf_logits(_load_hf(hf_dirs["opt_350m"]), "opt")
    )


@pytest.mark.parametrize("name", ["GPTNeoXForCausalLM", "GemmaForCausalLM"])
def test_other_architectures_are_refused_by_name(tmp_path, name):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": [name]}))
    with pytest.raises(ValueError, match=rf"'{name}' is not supported.*OPTForCausalLM"):
        hf.hf_to_flan(str(tmp_path))
