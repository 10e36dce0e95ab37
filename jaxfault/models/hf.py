"""Hugging Face checkpoint folders -> (Flax model, variables), without a hub download.

A folder holds ``config.json`` and the weights as one ``model.safetensors`` or as shards listed
by ``model.safetensors.index.json``. ``from_hf`` builds the model from the config
(:func:`model_from_config`), reads every tensor with the ``safetensors`` package in its stored
dtype (bfloat16 and float8 tensors, which safetensors' numpy reader cannot represent, are read as
raw little-endian bytes and viewed as ml_dtypes' types), maps Hugging Face's names onto the Flax
tree (transposing ``nn.Linear`` weights; GPT-2's ``Conv1D`` weights are already (in, out)) and
checks that every expected tensor is there with the expected shape and that nothing else is,
apart from buffers Hugging Face itself ignores on load (GPT-2's ``attn.bias`` /
``attn.masked_bias`` masks, Llama's ``rotary_emb.inv_freq``). Every problem is one
:class:`JaxfaultError` line that names the file, field or tensor.

Supported ``model_type`` values: ``gpt2`` (:class:`GPT2`), ``llama``, ``mistral`` and ``qwen2``
(:class:`Llama`). Mistral maps directly, its ``sliding_window`` included (the window mask is
implemented); Qwen2 maps with q/k/v biases and its sliding layers (``use_sliding_window``,
``max_window_layers`` or ``layer_types``). Only the default rotary embedding is implemented: a
``rope_scaling`` / ``rope_parameters`` of another type (linear, dynamic, yarn, llama3, ...) or a
``partial_rotary_factor`` below 1 is refused.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jaxfault.core.errors import JaxfaultError, one_line
from jaxfault.models.gpt2 import GPT2
from jaxfault.models.llama import Llama

MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"

# safetensors dtypes numpy has no type for, read as raw bytes
_RAW_DTYPES = {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


# ------------------------------------------------------------------------------------ config
def _field(cfg: dict, names, default=..., kind=int):
    """cfg[name] for the first of names present (HF attribute aliases), checked against kind."""
    names = (names,) if isinstance(names, str) else tuple(names)
    for n in names:
        if n in cfg and cfg[n] is not None:
            v = cfg[n]
            if kind is int and not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise JaxfaultError(f"config field {n!r} must be a positive integer, got {v!r}")
            if kind is float and not (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0):
                raise JaxfaultError(f"config field {n!r} must be a positive number, got {v!r}")
            if kind is bool and not isinstance(v, bool):
                raise JaxfaultError(f"config field {n!r} must be true or false, got {v!r}")
            if kind is str and not isinstance(v, str):
                raise JaxfaultError(f"config field {n!r} must be a string, got {v!r}")
            return float(v) if kind is float else v
    if default is ...:
        raise JaxfaultError(f"config.json has no {names[0]!r} field")
    return default


def _gpt2_from_config(cfg: dict) -> GPT2:
    if _field(cfg, "add_cross_attention", False, bool):
        raise JaxfaultError("config field 'add_cross_attention' is true: GPT-2 cross-attention is not supported")
    return GPT2(vocab_size=_field(cfg, "vocab_size"), n_positions=_field(cfg, ("n_positions", "max_position_embeddings")),
                n_embd=_field(cfg, ("n_embd", "hidden_size")), n_layer=_field(cfg, ("n_layer", "num_hidden_layers")),
                n_head=_field(cfg, ("n_head", "num_attention_heads")), n_inner=_field(cfg, "n_inner", None),
                activation_function=_field(cfg, "activation_function", "gelu_new", str),
                layer_norm_epsilon=_field(cfg, "layer_norm_epsilon", 1e-5, float),
                scale_attn_weights=_field(cfg, "scale_attn_weights", True, bool),
                scale_attn_by_inverse_layer_idx=_field(cfg, "scale_attn_by_inverse_layer_idx", False, bool),
                tie_word_embeddings=_field(cfg, "tie_word_embeddings", True, bool))


def _rope_theta(cfg: dict) -> float:
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise JaxfaultError(f"config field 'rope_parameters' must be an object, got {params!r}")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise JaxfaultError(f"unsupported rope_scaling type {rope_type!r}: only the default rotary embedding is "
                            "implemented")
    factor = params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    if factor != 1.0:
        raise JaxfaultError(f"unsupported partial_rotary_factor {factor!r}: only full rotary embeddings are implemented")
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    return _field({"rope_theta": theta}, "rope_theta", kind=float)


def _layer_windows(cfg: dict, model_type: str, n_layers: int) -> tuple:
    if model_type == "mistral":
        window = cfg.get("sliding_window", 4096)  # absent: MistralConfig's default
        if window is None:
            return ()
        window = _field({"sliding_window": window}, "sliding_window")
        return (window,) * n_layers
    if model_type == "qwen2":
        if not _field(cfg, "use_sliding_window", False, bool):
            return ()
        window = cfg.get("sliding_window", 4096)
        if window is None:
            return ()
        window = _field({"sliding_window": window}, "sliding_window")
        types = cfg.get("layer_types")
        if types is None:
            start = _field(cfg, "max_window_layers", 28)
            types = ["sliding_attention" if i >= start else "full_attention" for i in range(n_layers)]
        if not isinstance(types, list) or len(types) != n_layers or \
                any(t not in ("sliding_attention", "full_attention") for t in types):
            raise JaxfaultError(f"config field 'layer_types' must list 'sliding_attention' or 'full_attention' for "
                                f"each of the {n_layers} layers, got {types!r}")
        return tuple(window if t == "sliding_attention" else 0 for t in types)
    if cfg.get("sliding_window") is not None:
        raise JaxfaultError(f"config field 'sliding_window' is set for model_type {model_type!r}, which has no "
                            "sliding window in Hugging Face's definition")
    return ()


def _llama_from_config(cfg: dict, model_type: str) -> Llama:
    n_layers = _field(cfg, "num_hidden_layers")
    heads = _field(cfg, "num_attention_heads")
    if model_type == "qwen2":
        qkv_bias, o_bias, mlp_bias = True, False, False
    elif model_type == "mistral":
        qkv_bias = o_bias = mlp_bias = False
    else:
        qkv_bias = o_bias = _field(cfg, "attention_bias", False, bool)
        mlp_bias = _field(cfg, "mlp_bias", False, bool)
    if _field(cfg, "pretraining_tp", 1) != 1:
        raise JaxfaultError(f"config field 'pretraining_tp' must be 1, got {cfg['pretraining_tp']!r}")
    return Llama(vocab_size=_field(cfg, "vocab_size"), hidden_size=_field(cfg, "hidden_size"),
                 intermediate_size=_field(cfg, "intermediate_size"), num_hidden_layers=n_layers,
                 num_attention_heads=heads, num_key_value_heads=_field(cfg, "num_key_value_heads", heads),
                 head_dim=_field(cfg, "head_dim", None),
                 max_position_embeddings=_field(cfg, "max_position_embeddings", 2048),
                 rms_norm_eps=_field(cfg, "rms_norm_eps", 1e-6, float), rope_theta=_rope_theta(cfg),
                 hidden_act=_field(cfg, "hidden_act", "silu", str),
                 tie_word_embeddings=_field(cfg, "tie_word_embeddings", False, bool),
                 qkv_bias=qkv_bias, o_bias=o_bias, mlp_bias=mlp_bias,
                 layer_windows=_layer_windows(cfg, model_type, n_layers))


def model_from_config(cfg: dict):
    """The Flax model a Hugging Face ``config.json`` describes (no weights).

    Args:
      cfg: the parsed config.json.
    Returns:
      A GPT2 or Llama module; JaxfaultError naming the field when one is missing, malformed or
      describes something not implemented (another model_type, rope scaling, cross-attention).
    """
    if not isinstance(cfg, dict):
        raise JaxfaultError(f"config.json must hold a JSON object, got {type(cfg).__name__}")
    model_type = cfg.get("model_type")
    if model_type is None:
        raise JaxfaultError("config.json has no 'model_type' field")
    if model_type not in MODEL_TYPES:
        raise JaxfaultError(f"unsupported model_type {model_type!r}; supported: {', '.join(MODEL_TYPES)}")
    return _gpt2_from_config(cfg) if model_type == "gpt2" else _llama_from_config(cfg, model_type)


def read_config(path) -> dict:
    """The parsed ``config.json`` of a Hugging Face folder (JaxfaultError when absent or not JSON)."""
    folder = Path(path)
    if not folder.is_dir():
        raise JaxfaultError(f"{folder} is not a folder")
    f = folder / CONFIG_FILE
    if not f.is_file():
        raise JaxfaultError(f"{folder} has no {CONFIG_FILE}")
    try:
        return json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise JaxfaultError(f"{f} is not valid JSON: {one_line(e)}") from None


# ------------------------------------------------------------------------------------ weights
def _raw_tensor(file: Path, name: str, dtype_name: str, shape) -> np.ndarray:
    """A tensor read from its byte range in a safetensors file (header: u64 length + JSON)."""
    import ml_dtypes

    with open(file, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
        start, end = header[name]["data_offsets"]
        fh.seek(8 + n + start)
        data = fh.read(end - start)
    dt = np.dtype(getattr(ml_dtypes, _RAW_DTYPES[dtype_name])).newbyteorder("<")
    arr = np.frombuffer(data, dtype=dt)
    if arr.size != int(np.prod(shape)):
        raise JaxfaultError(f"{file.name}: tensor {name!r} holds {arr.size} values for shape {list(shape)}")
    return arr.reshape(shape)


def _read_safetensors(file: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open

    out = {}
    try:
        with safe_open(str(file), framework="numpy") as f:
            for name in f.keys():
                sl = f.get_slice(name)
                dtype_name, shape = sl.get_dtype(), tuple(sl.get_shape())
                if dtype_name in _RAW_DTYPES:
                    out[name] = _raw_tensor(file, name, dtype_name, shape)
                else:
                    out[name] = f.get_tensor(name)
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise JaxfaultError(f"cannot read {file}: {one_line(e)}") from None
    return out


def read_tensors(path) -> dict[str, np.ndarray]:
    """Every tensor of a Hugging Face folder, by name, in its stored dtype.

    Args:
      path: the folder; its weights are ``model.safetensors.index.json`` with its shards, else
        ``model.safetensors``.
    Returns:
      name -> numpy array (bfloat16 / float8 as ml_dtypes arrays). JaxfaultError when no weights
      file exists, a shard is missing, or the index and the shards disagree.
    """
    folder = Path(path)
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            assert isinstance(weight_map, dict)
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            raise JaxfaultError(f"{index} is not a safetensors index (no 'weight_map' object)") from None
        tensors: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            f = folder / str(shard)
            if not f.is_file():
                raise JaxfaultError(f"{folder}: shard {shard} listed in {INDEX_FILE} is missing")
            for name, arr in _read_safetensors(f).items():
                if weight_map.get(name) != shard:
                    raise JaxfaultError(f"{folder}: tensor {name!r} is in {shard} but {INDEX_FILE} maps it to "
                                        f"{weight_map.get(name)!r}")
                tensors[name] = arr
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise JaxfaultError(f"{folder}: tensor {missing[0]!r} listed in {INDEX_FILE} is in no shard")
        return tensors
    f = folder / WEIGHTS_FILE
    if not f.is_file():
        raise JaxfaultError(f"{folder} has no {WEIGHTS_FILE} or {INDEX_FILE}")
    return _read_safetensors(f)


def _gpt2_names(model: GPT2) -> dict:
    """Flax path -> (HF name, transpose, Flax shape) for GPT-2 (Conv1D weights are already (in, out))."""
    d, v = model.n_embd, model.vocab_size
    inner = model.n_inner if model.n_inner is not None else 4 * d
    m = {("wte", "kernel"): ("wte.weight", False, (v, d)),
         ("wpe", "kernel"): ("wpe.weight", False, (model.n_positions, d)),
         ("ln_f", "scale"): ("ln_f.weight", False, (d,)), ("ln_f", "bias"): ("ln_f.bias", False, (d,))}
    for i in range(model.n_layer):
        for ln in ("ln_1", "ln_2"):
            m[(f"h_{i}", ln, "scale")] = (f"h.{i}.{ln}.weight", False, (d,))
            m[(f"h_{i}", ln, "bias")] = (f"h.{i}.{ln}.bias", False, (d,))
        for mod, sub, n_in, n_out in (("attn", "c_attn", d, 3 * d), ("attn", "c_proj", d, d),
                                      ("mlp", "c_fc", d, inner), ("mlp", "c_proj", inner, d)):
            m[(f"h_{i}", mod, sub, "kernel")] = (f"h.{i}.{mod}.{sub}.weight", False, (n_in, n_out))
            m[(f"h_{i}", mod, sub, "bias")] = (f"h.{i}.{mod}.{sub}.bias", False, (n_out,))
    if not model.tie_word_embeddings:
        m[("lm_head", "kernel")] = ("lm_head.weight", True, (d, v))
    return m


def _llama_names(model: Llama) -> dict:
    """Flax path -> (HF name, transpose, Flax shape) for the Llama family (nn.Linear weights are
    (out, in), Flax kernels (in, out))."""
    d, v, inter = model.hidden_size, model.vocab_size, model.intermediate_size
    q, kv = model.num_attention_heads * model.dim_per_head, model.kv_heads * model.dim_per_head
    m = {("embed_tokens", "kernel"): ("embed_tokens.weight", False, (v, d)),
         ("norm", "scale"): ("norm.weight", False, (d,))}
    for i in range(model.num_hidden_layers):
        p = f"layers.{i}"
        for ln in ("input_layernorm", "post_attention_layernorm"):
            m[(f"layers_{i}", ln, "scale")] = (f"{p}.{ln}.weight", False, (d,))
        for proj, bias, n_in, n_out in (("q_proj", model.qkv_bias, d, q), ("k_proj", model.qkv_bias, d, kv),
                                        ("v_proj", model.qkv_bias, d, kv), ("o_proj", model.o_bias, q, d)):
            m[(f"layers_{i}", "self_attn", proj, "kernel")] = (f"{p}.self_attn.{proj}.weight", True, (n_in, n_out))
            if bias:
                m[(f"layers_{i}", "self_attn", proj, "bias")] = (f"{p}.self_attn.{proj}.bias", False, (n_out,))
        for proj, n_in, n_out in (("gate_proj", d, inter), ("up_proj", d, inter), ("down_proj", inter, d)):
            m[(f"layers_{i}", "mlp", proj, "kernel")] = (f"{p}.mlp.{proj}.weight", True, (n_in, n_out))
            if model.mlp_bias:
                m[(f"layers_{i}", "mlp", proj, "bias")] = (f"{p}.mlp.{proj}.bias", False, (n_out,))
    if not model.tie_word_embeddings:
        m[("lm_head", "kernel")] = ("lm_head.weight", True, (d, v))
    return m


def expected_tensors(model) -> dict:
    """Flax parameter path -> (Hugging Face tensor name without prefix, transposed?, Flax shape).

    Args:
      model: a GPT2 or Llama module.
    Returns:
      The complete list of tensors a checkpoint of this model must hold (the mapping documented
      in jaxfault.models.gpt2 / llama).
    """
    return _gpt2_names(model) if isinstance(model, GPT2) else _llama_names(model)


def _strip(name: str, prefixes) -> str:
    for p in prefixes:
        if name.startswith(p):
            return name[len(p):]
    return name


def _ignorable(name: str, family: str) -> bool:
    parts = name.split(".")
    if family == "gpt2":  # causal-mask buffers of older GPT-2 checkpoints
        return len(parts) == 4 and parts[0] == "h" and parts[2] == "attn" and parts[3] in ("bias", "masked_bias")
    return name.endswith(".self_attn.rotary_emb.inv_freq")  # Llama's recomputed RoPE buffer


def variables_from_tensors(model, tensors: dict[str, np.ndarray]) -> dict:
    """The Flax variables of `model` from Hugging Face's tensors, with every shape checked.

    Args:
      model: a GPT2 or Llama module (e.g. from model_from_config).
      tensors: HF name -> array, names with or without the ``transformer.`` / ``model.`` prefix.
    Returns:
      {'params': nested dict of jax arrays} in the stored dtypes. JaxfaultError naming the
      tensor when one is missing, has the wrong shape, or is not part of the model.
    """
    family = "gpt2" if isinstance(model, GPT2) else "llama"
    prefixes = ("transformer.",) if family == "gpt2" else ("model.",)
    by_name = {}
    for full, arr in tensors.items():
        short = full if full == "lm_head.weight" else _strip(full, prefixes)
        if short in by_name:
            raise JaxfaultError(f"tensor {full!r} appears twice (with and without its prefix)")
        by_name[short] = (full, arr)
    params: dict = {}
    for path, (hf, transpose, want) in expected_tensors(model).items():
        if hf not in by_name:
            raise JaxfaultError(f"checkpoint has no tensor {prefixes[0] + hf if hf != 'lm_head.weight' else hf!r} "
                                f"(Flax {'/'.join(path)}, shape {list(want[::-1] if transpose else want)})")
        full, arr = by_name.pop(hf)
        got = arr.T.shape if transpose else arr.shape
        if tuple(got) != want:
            expect = list(want[::-1]) if transpose else list(want)
            raise JaxfaultError(f"tensor {full!r} has shape {list(arr.shape)}, the config implies {expect}")
        d = params
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = jnp.asarray(np.ascontiguousarray(arr.T) if transpose else arr)
    if model.tie_word_embeddings and "lm_head.weight" in by_name:
        full, arr = by_name.pop("lm_head.weight")
        table = params["wte" if family == "gpt2" else "embed_tokens"]["kernel"]
        if arr.shape != table.shape or not np.array_equal(np.asarray(arr), np.asarray(table)):
            raise JaxfaultError(f"tensor {full!r} differs from the token embedding, but tie_word_embeddings is true")
    extra = sorted(full for short, (full, _) in by_name.items() if not _ignorable(short, family))
    if extra:
        raise JaxfaultError(f"checkpoint tensor {extra[0]!r} is not part of the {type(model).__name__} model "
                            f"({len(extra)} unknown tensors)")
    return {"params": params}


def from_hf(path):
    """Load a Hugging Face folder as a Flax model and its variables.

    Args:
      path: a folder with config.json and model.safetensors (or a sharded
        model.safetensors.index.json); nothing is downloaded.
    Returns:
      (model, variables): ``model.apply(variables, tokens)`` maps integer tokens (batch, length)
      to logits (batch, length, vocab_size). Tensors keep their stored dtype, and the model
      computes in it. Every problem (missing config or field, unsupported model_type, a missing,
      misshapen or unknown tensor) is a JaxfaultError naming it.
    """
    model = model_from_config(read_config(path))
    return model, variables_from_tensors(model, read_tensors(path))


def is_hf_folder(path) -> bool:
    """True when path is a folder holding a config.json (a Hugging Face checkpoint candidate)."""
    p = Path(path)
    return p.is_dir() and (p / CONFIG_FILE).is_file()


def load_tokenizer(path):
    """The ``tokenizers.Tokenizer`` of a folder's tokenizer.json, or None when it has none.

    Args:
      path: a Hugging Face folder.
    Returns:
      A tokenizers.Tokenizer (``encode(text).ids`` gives token ids) or None. JaxfaultError when
      the file exists but cannot be parsed.
    """
    f = Path(path) / TOKENIZER_FILE
    if not f.is_file():
        return None
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(f))
    except Exception as e:  # tokenizers raises its own exception type for malformed files
        raise JaxfaultError(f"cannot read {f}: {one_line(e)}") from None
