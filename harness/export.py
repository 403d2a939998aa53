"""Export a pretrained `MaskedLM` as a `transformers.RobertaForMaskedLM` folder (safetensors + config + tokenizer).

Our model and HF's compute the same function (post-LN only; HF has no pre-LN). The weight layout differs in three
places: HF numbers positions from pad_id + 1 (so its table has pad_id + 1 extra, unused rows at the top), it keeps
separate query/key/value matrices where we fuse them, and it always has a token-type table (one zero row when the
model was trained without NSP). The NSP head is not exported: RobertaForMaskedLM has no place for it, and
downstream heads are trained fresh.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from harness.errors import UserError
from harness.model import LN_EPS, MaskedLM
from harness.tokens import BOS, EOS, SPECIAL_TOKENS


def hf_config(model: MaskedLM):
    from transformers import RobertaConfig

    cfg = model.cfg
    return RobertaConfig(
        vocab_size=model.vocab_size,
        hidden_size=cfg.hidden,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        intermediate_size=cfg.ffn_mult * cfg.hidden,
        hidden_act="gelu",
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        max_position_embeddings=cfg.max_positions + model.pad_id + 1,
        type_vocab_size=2 if model.nsp else 1,
        layer_norm_eps=LN_EPS,
        initializer_range=0.02,
        pad_token_id=model.pad_id,
        bos_token_id=BOS,
        eos_token_id=EOS,
        tie_word_embeddings=True,
    )


def hf_state_dict(model: MaskedLM) -> dict[str, torch.Tensor]:
    """Our parameters under RobertaForMaskedLM's names and layout (fp32 copies)."""
    if model.cfg.norm != "post":
        raise UserError("model.norm: expected 'post' to export to RobertaForMaskedLM (HF has no pre-LN RoBERTa)")
    src = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
    H, first = model.cfg.hidden, model.pad_id + 1
    position = torch.zeros(model.cfg.max_positions + first, H)
    position[first:] = src["encoder.embed.position.weight"]
    e = "roberta.embeddings."
    out = {
        e + "word_embeddings.weight": src["encoder.embed.word.weight"],
        e + "position_embeddings.weight": position,
        e + "token_type_embeddings.weight": src.get("encoder.embed.token_type.weight", torch.zeros(1, H)),
        e + "LayerNorm.weight": src["encoder.embed.norm.weight"],
        e + "LayerNorm.bias": src["encoder.embed.norm.bias"],
        "lm_head.dense.weight": src["mlm_head.dense.weight"],
        "lm_head.dense.bias": src["mlm_head.dense.bias"],
        "lm_head.layer_norm.weight": src["mlm_head.norm.weight"],
        "lm_head.layer_norm.bias": src["mlm_head.norm.bias"],
        "lm_head.bias": src["mlm_head.bias"],
        "lm_head.decoder.weight": src["encoder.embed.word.weight"],  # tied
        "lm_head.decoder.bias": src["mlm_head.bias"],  # tied
    }
    renames = {"attn.out": "attention.output.dense", "norm1": "attention.output.LayerNorm",
               "mlp.up": "intermediate.dense", "mlp.down": "output.dense", "norm2": "output.LayerNorm"}
    for i in range(model.cfg.n_layers):
        ours, theirs = f"encoder.blocks.{i}.", f"roberta.encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = src[f"{ours}attn.qkv.{kind}"].chunk(3, dim=0)
            for name, t in zip(("query", "key", "value"), (q, k, v), strict=True):
                out[f"{theirs}attention.self.{name}.{kind}"] = t.contiguous()
            for a, b in renames.items():
                out[f"{theirs}{b}.{kind}"] = src[f"{ours}{a}.{kind}"]
    return out


def to_hf(model: MaskedLM):
    """A `transformers.RobertaForMaskedLM` holding a copy of `model`'s weights (same train/eval mode)."""
    from transformers import RobertaForMaskedLM

    hf = RobertaForMaskedLM(hf_config(model))
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
    missing = [k for k in missing if "position_ids" not in k and "token_type_ids" not in k]  # HF buffers
    if missing or unexpected:
        raise RuntimeError(f"weight mapping out of date: missing {missing}, unexpected {unexpected}")
    return hf.train(model.training)


def hf_tokenizer(tokenizer_json: Path, max_length: int, nsp: bool):
    """Wrap our `tokenizers` file as a fast HF tokenizer with RoBERTa's special tokens, adding them as pretraining
    did (harness.data: `<s> A </s>` and `<s> A </s> B </s>`). Token types (B = 1) only for a model trained with
    NSP; without, the model has one token type and, like RoBERTa's tokenizer, this one returns none."""
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    bos, pad, eos, unk, mask = SPECIAL_TOKENS
    tok = Tokenizer.from_file(str(tokenizer_json))
    b_type = ":1" if nsp else ""
    tok.post_processor = TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} $B{b_type} {eos}{b_type}",
        special_tokens=[(bos, BOS), (eos, EOS)],
    )
    inputs = ["input_ids", "token_type_ids", "attention_mask"] if nsp else ["input_ids", "attention_mask"]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, sep_token=eos, cls_token=bos, pad_token=pad,
        unk_token=unk, mask_token=mask, model_max_length=max_length, model_input_names=inputs,
    )


def export_hf(model: MaskedLM, tokenizer_json: Path, out: Path) -> Path:
    """Write `out/` so that `RobertaForMaskedLM.from_pretrained(out)` and `AutoTokenizer.from_pretrained(out)` load."""
    tokenizer_json, out = Path(tokenizer_json), Path(out)
    if not tokenizer_json.is_file():
        raise UserError(f"{tokenizer_json}: tokenizer file not found")
    hf = to_hf(model).eval()
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out, safe_serialization=True)
    hf_tokenizer(tokenizer_json, model.cfg.max_positions, model.nsp).save_pretrained(out)
    return out


def export_hf_from_cli(args: argparse.Namespace) -> None:
    """`python -m harness export-hf RUN_DIR OUT`."""
    from harness.pretrain import load_run

    run = load_run(Path(args.run_dir))
    cfg = run.config
    model = MaskedLM(cfg.model, run.vocab_size, nsp=cfg.data.nsp, seed=cfg.train.seed)  # the weights replace the init
    model.load_state_dict(run.weights)
    out = export_hf(model.eval(), run.tokenizer_path, Path(args.out))
    print(f"wrote {out} (load with transformers.RobertaForMaskedLM.from_pretrained)")
