"""Checks on the embedded `tiny` model (built by tools/build_tiny.py).

The worker's tests use this model as their stand-in LLM, so these tests pin the
properties they rely on: it loads offline, it is small, its chat template
works, seeded sampling is reproducible, and its output is clean text.
"""

import os

# Never let a test reach for the Hub: the model is a local folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import re  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "tiny"
MAX_BYTES = 10 * 1024 * 1024
PROMPT = [{"role": "user", "content": "Tell me a story."}]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(MODEL_DIR, local_files_only=True)


@pytest.fixture(scope="module")
def model():
    return AutoModelForCausalLM.from_pretrained(MODEL_DIR, local_files_only=True).eval()


@pytest.fixture(scope="module")
def corpus_words():
    return set(re.findall(r"[A-Za-z]+", (MODEL_DIR / "corpus.txt").read_text(encoding="ascii")))


def chat_prompt_ids(tokenizer):
    text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    # The rendered text already starts with <s>; don't let the tokenizer add another.
    return tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]


@torch.no_grad()
def sample(model, input_ids, seed, new_tokens=40, temperature=0.8, top_p=0.95, stop_ids=()):
    """Plain temperature + nucleus sampling driven only by a seeded Generator."""
    gen = torch.Generator().manual_seed(seed)
    ids = input_ids
    for _ in range(new_tokens):
        logits = model(input_ids=ids).logits[0, -1].float() / temperature
        probs = torch.softmax(logits, dim=-1)
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always >= 1 token).
        keep = (sorted_probs.cumsum(0) - sorted_probs) < top_p
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=gen)
        nxt = order[choice]
        ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
        if nxt.item() in stop_ids:
            break
    return ids[0, input_ids.shape[1]:].tolist()


def test_folder_is_small():
    size = sum(p.stat().st_size for p in MODEL_DIR.rglob("*") if p.is_file())
    assert size <= MAX_BYTES, f"models/tiny is {size} bytes"


def test_context_length_is_512(model, tokenizer):
    assert model.config.max_position_embeddings == 512
    assert tokenizer.model_max_length == 512


def test_special_token_ids_are_fixed(tokenizer, model):
    # Other components hard-code nothing, but ids must not drift between builds.
    assert (tokenizer.unk_token_id, tokenizer.pad_token_id) == (0, 1)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (2, 3)
    markers = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    assert tokenizer.convert_tokens_to_ids(markers) == [4, 5, 6, 7]
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.bos_token_id == tokenizer.bos_token_id


def test_chat_template_renders(tokenizer):
    messages = [
        {"role": "system", "content": "You tell old fables."},
        {"role": "user", "content": "Tell me a story."},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<s><|system|> You tell old fables. <|end|> <|user|> Tell me a story. <|end|> <|assistant|>"
    )
    closed = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert not closed.endswith("<|assistant|>")

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|assistant|>")
    assert tokenizer.unk_token_id not in ids


def test_seeded_sampling_is_reproducible(model, tokenizer):
    prompt = chat_prompt_ids(tokenizer)
    first = sample(model, prompt, seed=7)
    second = sample(model, prompt, seed=7)
    assert first == second
    assert len(first) == 40  # no stop ids given, so always the full length


def test_output_is_clean_corpus_text(model, tokenizer, corpus_words):
    stops = (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end|>"))
    new_ids = sample(model, chat_prompt_ids(tokenizer), seed=7, stop_ids=stops)
    text = tokenizer.decode(new_ids, skip_special_tokens=True)

    assert text.encode("utf-8").decode("utf-8") == text
    assert "\ufffd" not in text
    words = re.findall(r"[A-Za-z]+", text)
    assert len(words) >= 10, text
    assert set(words) <= corpus_words, text
    visible = [c for c in text if not c.isspace()]
    assert sum(c.isalpha() for c in visible) / len(visible) >= 0.7, text
