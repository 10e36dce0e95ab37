"""Build the tiny Hugging Face checkpoints of tests/data/hf and their reference logits.

Each case is a randomly initialised model of Hugging Face's own classes (transformers + torch,
CPU, float32, eager attention), saved with ``save_pretrained`` as config.json + safetensors,
next to ``golden.npz`` holding the fixed input tokens and the logits that
``model(tokens).logits`` returns (the folder reloaded with ``from_pretrained`` in float32). The test suite loads the folders with
``jaxfault.models.from_hf`` and compares its logits to these, without torch.

Weights are redrawn after Hugging Face's initialisation at larger scales (matrices N(0, 0.2^2),
norm weights 1 + N(0, 0.1^2), biases N(0, 0.1^2)) so that logits are O(1) and a wrong bias,
norm or transpose changes them visibly.

Run from the repository root (needs ``pip install torch==2.13.0 transformers``):

    python scripts/make_hf_golden.py [--out tests/data/hf]
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

SEQ, BATCH, VOCAB, HIDDEN, LAYERS = 8, 2, 64, 32, 2


def cases():
    """name -> (config class name, config kwargs, save dtype, save_pretrained kwargs)."""
    common = dict(vocab_size=VOCAB, num_hidden_layers=LAYERS)
    llama = dict(common, hidden_size=HIDDEN, intermediate_size=64, num_attention_heads=4, max_position_embeddings=32)
    return {
        # GPT-2: tied head (the default), gelu_new, LayerNorm eps from the config
        "gpt2_tied": ("GPT2Config", dict(vocab_size=VOCAB, n_layer=LAYERS, n_embd=HIDDEN, n_head=4, n_inner=64,
                                         n_positions=16, layer_norm_epsilon=1e-5, bos_token_id=0, eos_token_id=0),
                      "float32", {}),
        # GPT-2 with an untied head, inverse-layer-index score scaling, sharded weights
        "gpt2_untied_sharded": ("GPT2Config", dict(vocab_size=VOCAB, n_layer=LAYERS, n_embd=HIDDEN, n_head=2,
                                                   n_inner=48, n_positions=16, layer_norm_epsilon=1e-4,
                                                   tie_word_embeddings=False, scale_attn_by_inverse_layer_idx=True,
                                                   bos_token_id=0, eos_token_id=0),
                                "float32", {"max_shard_size": "30KB"}),
        # Llama: grouped-query attention (4 heads, 2 kv heads), untied head, rope_theta 500000
        "llama_gqa": ("LlamaConfig", dict(llama, num_key_value_heads=2, rope_theta=500000.0, rms_norm_eps=1e-5,
                                          tie_word_embeddings=False), "float32", {}),
        # Llama: multi-head, tied head, attention and MLP biases, explicit head_dim 16 with 4 heads
        "llama_tied_bias": ("LlamaConfig", dict(llama, num_key_value_heads=4, tie_word_embeddings=True,
                                                attention_bias=True, mlp_bias=True, head_dim=16), "float32", {}),
        # Qwen2: q/k/v biases (no o_proj bias), GQA 4/1, tied
        "qwen2": ("Qwen2Config", dict(llama, num_key_value_heads=1, tie_word_embeddings=True, rope_theta=1e6),
                  "float32", {}),
        # Mistral: GQA and a sliding window of 4 over 8 tokens (the window changes the logits)
        "mistral_window": ("MistralConfig", dict(llama, num_key_value_heads=2, sliding_window=4), "float32", {}),
        # Llama stored in bfloat16 (dtype kept on load)
        "llama_bf16": ("LlamaConfig", dict(llama, num_key_value_heads=2), "bfloat16", {}),
    }


def _redraw(model, torch, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            elif "norm" in name or "ln_" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def _tokenizer(vocab_size):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{f"w{i}": i for i in range(1, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="tests/data/hf", help="output folder (one subfolder per case)")
    args = p.parse_args(argv)

    import torch
    import transformers

    torch.manual_seed(0)
    out = Path(args.out)
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=(BATCH, SEQ)).astype(np.int64)
    for seed, (name, (cfg_cls, kwargs, dtype, save_kwargs)) in enumerate(cases().items()):
        cfg = getattr(transformers, cfg_cls)(**kwargs)
        cfg._attn_implementation = "eager"
        model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
        _redraw(model, torch, seed)
        if dtype == "bfloat16":
            model = model.to(torch.bfloat16)
        folder = out / name
        if folder.exists():
            shutil.rmtree(folder)
        model.save_pretrained(folder, **save_kwargs)
        (folder / "generation_config.json").unlink(missing_ok=True)  # sampling settings, not part of the model
        if name == "gpt2_tied":
            _tokenizer(VOCAB).save(str(folder / "tokenizer.json"))
        # reference logits: Hugging Face's float32 computation of the weights as stored, reloaded
        # from the folder (a bf16 checkpoint's values upcast on load, its RoPE tables computed afresh)
        ref = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                                attn_implementation="eager").eval()
        with torch.no_grad():
            logits = ref(torch.from_numpy(tokens)).logits.float().numpy()
        np.savez(folder / "golden.npz", tokens=tokens.astype(np.int32), logits=logits.astype(np.float32))
        size = sum(f.stat().st_size for f in folder.iterdir())
        print(f"{name}: {cfg_cls} {dtype}, {sum(p.numel() for p in model.parameters())} parameters, "
              f"{size / 1024:.0f} KiB, logits |max| {np.abs(logits).max():.3f}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")


if __name__ == "__main__":
    main()
