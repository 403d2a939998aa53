"""The encoder: shapes per preset, agreement with transformers' RoBERTa, HF export round trip, bad inputs."""

import argparse
import dataclasses
import os
import random

import pytest
import torch
import torch.nn.functional as F
import yaml

from harness.config import Config, DataConfig, ModelConfig
from harness.errors import UserError
from harness.model import MaskedLM, count_params
from harness.tokens import IGNORE_INDEX, SPECIAL_TOKENS

os.environ.setdefault("HF_HUB_OFFLINE", "1")
V = 1000


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def batch(B=3, T=24, vocab=V, pad_lengths=(24, 17, 9), seed=0, p=0.3):
    """Random right-padded batch: ids (B, T), bool mask, labels with -100 off the selected real tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (B, T), generator=g)
    mask = torch.arange(T)[None, :] < torch.tensor(pad_lengths[:B])[:, None]
    ids[~mask] = 1
    sel = (torch.rand(B, T, generator=g) < p) & mask
    sel[:, 1] = True  # at least one prediction per row
    labels = torch.where(sel, torch.randint(5, vocab, (B, T), generator=g), IGNORE_INDEX)
    return ids, mask, labels


@pytest.mark.parametrize("preset", ["tiny", "mini"])
@pytest.mark.parametrize("nsp", [False, True])
def test_shapes(preset, nsp):
    cfg = ModelConfig(preset=preset)
    model = MaskedLM(cfg, V, nsp=nsp, seed=0)
    ids, mask, labels = batch()
    types = (torch.arange(ids.size(1)) > 10).long().expand_as(ids) if nsp else None
    out = model(ids, mask, types, labels)
    n = int((labels != IGNORE_INDEX).sum())
    assert out.mlm_logits.shape == (n, V) and out.mlm_targets.shape == (n,)
    assert torch.equal(out.mlm_targets, labels[labels != IGNORE_INDEX])
    assert (out.nsp_logits.shape == (3, 2)) if nsp else (out.nsp_logits is None)
    assert model.encode(ids, mask, types).shape == (*ids.shape, cfg.hidden)
    assert model.num_params() == count_params(cfg, V, nsp)
    all_positions = model.eval()(ids, mask, types)  # no labels: every position, targets = inputs
    assert all_positions.mlm_logits.shape == (ids.numel(), V) and torch.equal(all_positions.mlm_targets, ids.flatten())


def test_init_is_a_function_of_seed_and_parameter_name():
    """A segment_pair_nsp-shaped model (token types, NSP head) and a full_sentences one start from identical values
    for every parameter they share, whatever the global RNG; another seed gives other values; still BERT's init."""
    cfg = ModelConfig(preset="tiny")
    torch.manual_seed(1)
    nsp = dict(MaskedLM(cfg, V, nsp=True, seed=7).named_parameters())
    torch.manual_seed(2)
    model = MaskedLM(cfg, V, nsp=False, seed=7)
    plain = dict(model.named_parameters())
    other = dict(MaskedLM(cfg, V, nsp=False, seed=8).named_parameters())
    assert set(nsp) - set(plain) == {"encoder.embed.token_type.weight", "nsp_head.pooler.weight",
                                     "nsp_head.pooler.bias", "nsp_head.classifier.weight", "nsp_head.classifier.bias"}
    for name, p in plain.items():
        assert torch.equal(p, nsp[name]), name
        if p.ndim == 2:  # weights are drawn; biases and LayerNorms are constants
            assert not torch.equal(p, other[name]), name
            assert p.std().item() == pytest.approx(0.02, rel=0.1) and abs(p.mean().item()) < 0.002, name
        elif "norm" in name and name.endswith(".weight"):  # LayerNorm scales
            assert (p == 1).all(), name
        else:
            assert (p == 0).all(), name
    word = plain["encoder.embed.word.weight"]
    assert (word[1] == 0).all() and (word[0] != 0).all()  # the <pad> row (pad_id=1) only
    assert model.mlm_head.decoder_weight is word  # the decoder stays tied to the word embedding


@pytest.mark.parametrize("preset", ["tiny", "mini", "small", "base", "large"])
def test_param_counts_match_hf(preset):
    """Built on the meta device (no memory): our count == the formula == HF's RoBERTa, which has pad_id + 1 = 2 more
    position rows and a token-type row that we leave out without NSP. base: RoBERTa-base's published 125M."""
    from transformers import RobertaForMaskedLM

    from harness.export import hf_config

    cfg = ModelConfig(preset=preset)
    with torch.device("meta"):
        model = MaskedLM(cfg, 50_265, seed=0)
        hf = RobertaForMaskedLM(hf_config(model))
    assert model.num_params() == count_params(cfg, 50_265)
    hf_params = sum(p.numel() for p in hf.parameters())
    assert hf_params == model.num_params() + 3 * cfg.hidden
    if preset == "base":
        assert round(hf_params / 1e6) == 125


def test_flops_per_token():
    cfg = ModelConfig(preset="mini")
    H, L, T, F_ = 256, 4, 128, 1024
    model = MaskedLM(cfg, V, seed=0)
    layer = 2 * 4 * H * H + 2 * 2 * H * F_ + 2 * 2 * T * H  # projections, MLP, attention; per token, forward
    kv = 2 * 2 * H * H
    last = kv + (0.15 + 1 / T) * (layer - kv)  # the last layer computes queries only where the loss reads
    head = 2 * H * H + 2 * H * V
    assert model.flops_per_token(T, 0.15) == pytest.approx(3 * ((L - 1) * layer + last + 0.15 * head))
    assert model.flops_per_token(T, 1.0) == pytest.approx(3 * (L * layer + head))  # every position: the full model


@pytest.mark.parametrize("nsp", [False, True])
def test_agrees_with_hf_roberta(nsp):
    from harness.export import to_hf

    torch.manual_seed(0)
    model = MaskedLM(ModelConfig(preset="tiny", max_positions=64), V, nsp=nsp, seed=0).eval()
    with torch.no_grad():  # make biases and LayerNorms non-trivial so a mis-mapped one would show
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    hf = to_hf(model).eval()
    ids, mask, labels = batch()
    types = ((torch.arange(ids.size(1)) > 6) & mask).long() if nsp else None
    with torch.no_grad():
        ours = model(ids, mask, types, labels)
        theirs = hf(input_ids=ids, attention_mask=mask.long(), token_type_ids=types).logits  # (B, T, V)
    torch.testing.assert_close(ours.mlm_logits, theirs[labels != IGNORE_INDEX], atol=1e-4, rtol=1e-4)


def test_padding_and_no_mask_paths_agree():
    """attention_mask=None (SDPA without a mask) == an all-True mask; extra padding leaves real tokens unchanged."""
    torch.manual_seed(0)
    model = MaskedLM(ModelConfig(preset="tiny"), V, seed=0).eval()
    ids = torch.randint(5, V, (2, 16))
    with torch.no_grad():
        a = model.encode(ids)
        b = model.encode(ids, torch.ones_like(ids, dtype=torch.bool))
        padded = torch.cat([ids, torch.ones(2, 5, dtype=torch.long)], 1)
        c = model.encode(padded, padded != 1)[:, :16]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)


def test_pre_ln_runs_and_trains():
    torch.manual_seed(0)
    model = MaskedLM(ModelConfig(preset="tiny", norm="pre"), V, seed=0)
    assert model.encoder.final_norm is not None
    ids, mask, labels = batch()
    out = model(ids, mask, None, labels)
    F.cross_entropy(out.mlm_logits, out.mlm_targets).backward()
    assert out.mlm_logits.shape == (int((labels != IGNORE_INDEX).sum()), V)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    from harness.export import to_hf

    with pytest.raises(UserError, match="model.norm"):
        to_hf(model)


@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("nsp", [False, True])
def test_sparse_last_layer_equals_full_encoder(norm, nsp):
    """forward() computes the last block only where the loss reads; same numbers as encoding every position."""
    torch.manual_seed(0)
    model = MaskedLM(ModelConfig(preset="tiny", norm=norm), V, nsp=nsp, seed=0).eval()
    ids, mask, labels = batch()
    types = ((torch.arange(ids.size(1)) > 6) & mask).long() if nsp else None
    with torch.no_grad():
        out = model(ids, mask, types, labels)
        h = model.encode(ids, mask, types)  # (B, T, H)
        torch.testing.assert_close(out.mlm_logits, model.mlm_head(h[labels != IGNORE_INDEX]), atol=1e-5, rtol=1e-5)
        if nsp:
            torch.testing.assert_close(out.nsp_logits, model.nsp_head(h[:, 0]), atol=1e-5, rtol=1e-5)


def test_gradient_only_through_selected_positions():
    """The MLM head sees only the selected rows; the last block's query side only those rows (and position 0)."""
    torch.manual_seed(0)
    model = MaskedLM(ModelConfig(preset="tiny", dropout=0.0), V, seed=0)
    ids, mask, labels = batch()
    seen = {}

    def count_rows(module, inputs, output):
        seen["rows"] = inputs[0].shape[0]

    model.mlm_head.register_forward_hook(count_rows)
    out = model(ids, mask, None, labels)
    F.cross_entropy(out.mlm_logits, out.mlm_targets).backward()
    assert seen["rows"] == int((labels != IGNORE_INDEX).sum())
    # a selected position's embedding gets gradient; so does every other real token (as a key/value), never a pad
    grad = model.encoder.embed.position.weight.grad
    assert grad.norm(dim=-1)[: mask.sum(1).max()].gt(0).all()
    model.zero_grad()
    h = model.encode(ids, mask)
    h.retain_grad()
    out = model.mlm_head(h[labels != IGNORE_INDEX])
    F.cross_entropy(out, labels[labels != IGNORE_INDEX]).backward()
    row_norms = h.grad.norm(dim=-1)  # (B, T): d loss / d final state
    selected = labels != IGNORE_INDEX
    assert (row_norms[~selected] == 0).all() and (row_norms[selected] > 0).all()


def test_bad_inputs():
    model = MaskedLM(ModelConfig(preset="tiny", max_positions=32), V, seed=0)
    with pytest.raises(UserError, match=r"data.max_seq_len: expected <= model.max_positions=32"):
        model(torch.randint(5, V, (2, 33)))
    with pytest.raises(UserError, match="model.n_heads"):
        ModelConfig(preset="custom", n_layers=1, hidden=100, n_heads=3)


def _train_tokenizer(path):
    from tokenizers import ByteLevelBPETokenizer

    rng = random.Random(0)
    words = ("the cat dog sat on a mat and ran far away from home while birds sang in green trees near old river "
             "stones quietly every morning because nobody knew why").split()
    sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))).capitalize() + "." for _ in range(300)]
    tok = ByteLevelBPETokenizer(add_prefix_space=True)
    tok.train_from_iterator(sentences, vocab_size=400, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
                            show_progress=False)
    tok.save(str(path))
    return tok.get_vocab_size()


def _check_round_trip(model, out):
    from transformers import AutoTokenizer, RobertaForMaskedLM

    hf = RobertaForMaskedLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(["The cat sat on a mat.", "Birds sang"], ["A dog ran.", "Home"], padding=True, return_tensors="pt")
    assert enc.input_ids[0, 0].item() == 0 and enc.input_ids[0, -1].item() == 2 and tok.pad_token_id == 1
    assert ("token_type_ids" in enc) == model.nsp  # segment B has type 1 only where the model knows two types
    ids, mask, types = enc.input_ids, enc.attention_mask.bool(), enc.get("token_type_ids")
    labels = torch.where(mask, ids, IGNORE_INDEX)
    with torch.no_grad():
        ours = model.eval()(ids, mask, types, labels).mlm_logits
        theirs = hf(**enc).logits[mask]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert (out / "model.safetensors").is_file()


def test_export_round_trip(tmp_path):
    from harness.export import export_hf

    vocab = _train_tokenizer(tmp_path / "tokenizer.json")
    torch.manual_seed(0)
    model = MaskedLM(ModelConfig(preset="tiny", max_positions=64), vocab, seed=0)
    _check_round_trip(model, export_hf(model, tmp_path / "tokenizer.json", tmp_path / "hf"))


def test_export_from_run_folder(tmp_path):
    from harness.export import export_hf_from_cli

    run = tmp_path / "runs" / "study" / "arm" / "seed_0"
    (run / "checkpoints").mkdir(parents=True)
    args = argparse.Namespace(run_dir=str(run), out=str(tmp_path / "hf"))
    with pytest.raises(UserError, match="config.yaml"):
        export_hf_from_cli(args)
    cfg = Config(data=DataConfig(input_format="segment_pair_nsp", max_seq_len=64),
                 model=ModelConfig(preset="tiny", max_positions=64))
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    with pytest.raises(UserError, match="last.ckpt"):
        export_hf_from_cli(args)
    vocab = _train_tokenizer(run / "tokenizer.json")
    torch.manual_seed(0)
    model = MaskedLM(cfg.model, vocab, nsp=True, seed=0)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "global_step": 1}, run / "checkpoints" / "last.ckpt")
    export_hf_from_cli(args)
    _check_round_trip(model, tmp_path / "hf")


def test_cpu_dropout_rate_scale_and_seed():
    from harness.model import attention_with_dropout, dropout

    x = torch.ones(1000, 1000)
    torch.manual_seed(1)
    y = dropout(x, 0.1, training=True)
    assert abs((y == 0).float().mean().item() - 0.1) < 3e-3  # ~ 5 standard errors of 1e6 draws
    assert abs(y.mean().item() - 1.0) < 5e-3
    torch.testing.assert_close(y.unique(), torch.tensor([0.0, 65536 / (65536 - 6554)]))  # kept values scaled
    torch.manual_seed(1)
    assert torch.equal(dropout(x, 0.1, training=True), y)  # reproducible under torch.manual_seed
    assert dropout(x, 0.1, training=False) is x
    q, k, v = torch.randn(3, 2, 4, 16, 8).unbind(0)
    mask = torch.tensor([[True] * 16, [True] * 10 + [False] * 6])[:, None, None, :]
    torch.testing.assert_close(attention_with_dropout(q, k, v, mask, 0.0),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def test_tiny_model_learns_a_fixed_batch():
    """Training path end to end (cheap CPU dropout, sparse last block, tied head): the loss falls on one batch."""
    from harness import speed

    torch.manual_seed(0)
    model = MaskedLM(ModelConfig(preset="tiny"), V, seed=0).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, **speed.adamw_kwargs("cpu"))
    ids, mask, labels = batch(B=4, T=24, pad_lengths=(24, 20, 16, 12))
    losses = []
    for _ in range(30):
        out = model(ids, mask, None, labels)
        loss = F.cross_entropy(out.mlm_logits.float(), out.mlm_targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_sinusoidal_position_init_starts_neighbours_alike_and_changes_nothing_else():
    cfg = ModelConfig(preset="tiny", max_positions=64)
    normal = MaskedLM(cfg, V, seed=0).state_dict()
    sinus = MaskedLM(dataclasses.replace(cfg, position_init="sinusoidal"), V, seed=0).state_dict()
    table = sinus.pop("encoder.embed.position.weight")
    normal.pop("encoder.embed.position.weight")
    assert all(torch.equal(normal[k], sinus[k]) for k in normal)  # the same draw for every other parameter
    assert table.std().item() == pytest.approx(0.02, rel=1e-3)
    cos = F.cosine_similarity(table[10], table, dim=-1)
    assert cos[11] > 0.9 and cos[12] > cos[20] > cos[60] and cos[11] > cos[30]  # nearer positions start more alike
    assert torch.allclose(table[:, 0] / table[:, 0].abs().max(), torch.sin(torch.arange(64.0)), atol=1e-5)
