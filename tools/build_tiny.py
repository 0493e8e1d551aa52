#!/usr/bin/env python3
"""Build the embedded `tiny` model from models/tiny/corpus.txt, deterministically.

    python tools/build_tiny.py [--out models/tiny] [--steps N] [--seed S]

The project ships its own toy model so that tests and demos never download
weights. Everything here is seeded and single-threaded, so running the script
twice on the same software stack yields byte-identical files (BUILD_INFO.json
records the sha256 of each file so that can be checked).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

# Must be set before torch starts its thread pools: one thread keeps float
# reductions in a fixed order, which is what makes the weights bit-identical.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models  # noqa: E402
from tokenizers import normalizers, pre_tokenizers, processors  # noqa: E402
from transformers import (  # noqa: E402
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "models" / "tiny"
DEFAULT_CORPUS = DEFAULT_OUT / "corpus.txt"

# --- tokenizer -------------------------------------------------------------

UNK, PAD, BOS, EOS = "<unk>", "<pad>", "<s>", "</s>"
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
# Fixed order => fixed ids 0..7, which other components may rely on.
SPECIAL_TOKENS = [UNK, PAD, BOS, EOS, SYSTEM, USER, ASSISTANT, END]

# Every turn is "<|role|> content <|end|>". The markers strip surrounding
# spaces when tokenized, so the spaces only make the rendered text readable.
# The template starts with the bos text (Llama convention): tokenize its output
# with add_special_tokens=False, or the post-processor adds a second <s>.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('tiny: unknown role ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|> ' + (message['content'] | trim) + ' <|end|> ' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

# --- model / training hyper-parameters ---------------------------------------

MODEL_SHAPE = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=512,
)
SEQ_LEN = 512  # packed training window = the full context the model supports
BATCH = 4
LR, MIN_LR_FRAC, WARMUP = 3e-3, 0.1, 30
CHAT_FRACTION = 0.35  # share of fables that appear wrapped as a chat turn
DEFAULT_STEPS = 500
DEFAULT_SEED = 1234

# Chat prompts; build_tokenizer() checks that their words occur in the corpus,
# so the vocabulary really is "the words of the corpus" and nothing else.
SYSTEM_PROMPTS = [None, None, "You tell old fables.", "Tell a short story with a moral."]
GENERIC_REQUESTS = ["Tell me a story.", "Tell me a fable.", "Please tell me a story."]
TITLED_REQUESTS = ["Tell me the fable of {title}.", "{title}", "Tell me a story about {title}."]


def read_fables(path: Path) -> list[tuple[str, str]]:
    """Corpus format: blocks separated by a blank line, first line = title."""
    fables = []
    for block in path.read_text(encoding="ascii").strip().split("\n\n"):
        title, _, body = block.strip().partition("\n")
        fables.append((title.strip(), " ".join(body.split())))
    return fables


def fable_text(title: str, body: str) -> str:
    return f"{title}. {body}"


def _raw_tokenizer(vocab: dict[str, int]) -> Tokenizer:
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    # Collapse whitespace so newlines never become tokens of their own.
    tok.normalizer = normalizers.Replace(Regex(r"\s+"), " ")
    # Metaspace keeps the space as a "\u2581" prefix on the word; that makes
    # decoding lossless (no guessing where spaces go around punctuation).
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True),
            pre_tokenizers.Punctuation(behavior="isolated"),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    return tok


def word_counts(tok: Tokenizer, texts: list[str]) -> Counter:
    counts: Counter = Counter()
    for text in texts:
        norm = tok.normalizer.normalize_str(text)
        counts.update(piece for piece, _ in tok.pre_tokenizer.pre_tokenize_str(norm))
    return counts


def build_tokenizer(fables: list[tuple[str, str]]) -> PreTrainedTokenizerFast:
    probe = _raw_tokenizer({UNK: 0})
    counts = word_counts(probe, [fable_text(t, b) for t, b in fables])
    prompts = [p for p in SYSTEM_PROMPTS + GENERIC_REQUESTS if p]
    prompts += [r.format(title=t) for r in TITLED_REQUESTS for t, _ in fables]
    missing = set(word_counts(probe, prompts)) - set(counts)
    if missing:
        sys.exit(f"chat prompts use words missing from the corpus: {sorted(missing)}")

    # Frequency order (ties alphabetical) so the layout never depends on dict order.
    words = sorted(counts, key=lambda w: (-counts[w], w))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + words)}
    tok = _raw_tokenizer(vocab)
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False, lstrip=True, rstrip=True) for t in SPECIAL_TOKENS]
    )
    # Plain-text prompts get <s> like the training documents do.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        additional_special_tokens=[SYSTEM, USER, ASSISTANT, END],
        chat_template=CHAT_TEMPLATE,
        model_max_length=MODEL_SHAPE["max_position_embeddings"],
        clean_up_tokenization_spaces=False,  # decoding is already exact
    )


# --- data --------------------------------------------------------------------


def render_document(tokenizer, title: str, body: str, rng: random.Random) -> str:
    """One fable as either a plain document or a chat exchange, ending in </s>."""
    text = fable_text(title, body)
    if rng.random() >= CHAT_FRACTION:
        return f"{BOS}{text}{EOS}"
    messages = []
    system = rng.choice(SYSTEM_PROMPTS)
    if system:
        messages.append({"role": "system", "content": system})
    if rng.random() < 0.5:
        request = rng.choice(GENERIC_REQUESTS)
    else:
        request = rng.choice(TITLED_REQUESTS).format(title=title)
    messages.append({"role": "user", "content": request})
    messages.append({"role": "assistant", "content": text})
    # The rendered assistant turn ends in <|end|>; </s> then closes the sample,
    # so a server stopping on either token gets a clean answer.
    return tokenizer.apply_chat_template(messages, tokenize=False) + EOS


def token_stream(tokenizer, fables, rng: random.Random):
    """Endless stream of token ids: each epoch is a seeded shuffle of the fables."""
    while True:
        order = list(range(len(fables)))
        rng.shuffle(order)
        for i in order:
            text = render_document(tokenizer, *fables[i], rng)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert tokenizer.unk_token_id not in ids, f"<unk> in training data: {fables[i][0]}"
            yield from ids


def batches(stream, batch: int, seq_len: int):
    """Pack the stream into fixed [batch, seq_len] windows (no padding needed)."""
    while True:
        flat = [next(stream) for _ in range(batch * seq_len)]
        yield torch.tensor(flat, dtype=torch.long).view(batch, seq_len)


# --- model / training ----------------------------------------------------------


def make_model(tokenizer) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,  # halves the size; the vocab dominates params
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rms_norm_eps=1e-5,
        **MODEL_SHAPE,
    )
    return LlamaForCausalLM(config)


def lr_at(step: int, steps: int) -> float:
    """Linear warmup, then cosine decay to MIN_LR_FRAC * LR."""
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, steps - WARMUP)
    return LR * (MIN_LR_FRAC + (1 - MIN_LR_FRAC) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model, tokenizer, fables, steps: int, seed: int) -> float:
    rng = random.Random(seed)
    data = batches(token_stream(tokenizer, fables, rng), BATCH, SEQ_LEN)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.01)
    model.train()
    start, loss_value = time.time(), float("nan")
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps)
        ids = next(data)
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_value = loss.item()
        if step % 25 == 0 or step == steps - 1:
            print(f"step {step + 1:4d}/{steps}  loss {loss_value:.4f}  "
                  f"lr {lr_at(step, steps):.2e}  {time.time() - start:6.1f}s", flush=True)
    model.eval()
    return loss_value


# --- output --------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save(out: Path, model, tokenizer, info: dict) -> dict:
    """Write model, tokenizer and generation config, then BUILD_INFO.json."""
    out.mkdir(parents=True, exist_ok=True)
    # Save into a scratch folder first so we know exactly which files this
    # build produced (out/ also holds the hand-written corpus.txt and README.md).
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            # Stop at the end of a chat turn as well as at end of document.
            eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(END)],
            pad_token_id=tokenizer.pad_token_id,
            do_sample=True,
            temperature=0.8,
            top_p=0.95,
            max_new_tokens=200,
        ).save_pretrained(staging)
        written = sorted(p.name for p in staging.iterdir() if p.is_file())
        for name in written:
            shutil.copyfile(staging / name, out / name)
    info["files"] = {name: sha256(out / name) for name in written}
    (out / "BUILD_INFO.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


def sample_chat(model, tokenizer, prompt: str, seed: int, max_new_tokens: int = 60) -> str:
    """A quick seeded sample, printed so a human can eyeball the build."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            probs = torch.softmax(model(input_ids=ids).logits[0, -1] / 0.8, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=gen)
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
            if nxt.item() == tokenizer.eos_token_id:
                break
    return tokenizer.decode(ids[0], skip_special_tokens=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="fables, one block each")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="RNG seed (default: %(default)s)")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)

    fables = read_fables(args.corpus)
    tokenizer = build_tokenizer(fables)
    print(f"{len(fables)} fables, vocab {len(tokenizer)} tokens", flush=True)
    model = make_model(tokenizer)
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters", flush=True)

    start = time.time()
    final_loss = train(model, tokenizer, fables, args.steps, args.seed)
    print(f"trained {args.steps} steps in {time.time() - start:.1f}s, final loss {final_loss:.4f}")

    # No timestamps or durations here: the folder itself must be reproducible.
    info = {
        "model": "tiny",
        "corpus_sha256": sha256(args.corpus),
        "steps": args.steps,
        "seed": args.seed,
        "batch": BATCH,
        "seq_len": SEQ_LEN,
        "final_loss": round(final_loss, 6),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "special_token_ids": {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS},
    }
    save(args.out, model, tokenizer, info)
    size = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    print(f"wrote {args.out} ({size / 1e6:.2f} MB)")
    print("sample:", sample_chat(model, tokenizer, "Tell me a story.", args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
