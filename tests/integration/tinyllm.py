"""Writes a tiny, randomly initialised Llama chat model and its tokenizer to a folder, with
nothing downloaded: what `transformers serve` serves in test_transformers_serve.py.

Run by the Python of .venv-transformers (this file imports torch and transformers, which the
project's own venv lacks): ``python tinyllm.py OUT_DIR``. Seeded: the same files every run.
About 200 KB, written in about 5 s.
"""

import sys

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]
CORPUS = [
    "Hello, how are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "An inference server answers chat completion requests.",
    "Say something short and friendly.",
    "What is the capital of France? Paris is the capital.",
    "One two three four five six seven eight nine ten.",
] * 20
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``CORPUS``: any text encodes, with no unknown tokens."""
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(CORPUS, trainer=trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>",
                                   chat_template=CHAT_TEMPLATE)


def model(tok: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    llm = LlamaForCausalLM(config)
    # A token whose output row is zero scores 0, below the best of hundreds of random rows:
    # greedy decoding never picks it. Zeroed: the special tokens (EOS included), so every
    # answer runs to max_tokens, and those that decode to anything but printable ASCII, so
    # every token is visible text (servers drop special tokens from the text and hold back
    # a partial UTF-8 character).
    special = set(tok.convert_tokens_to_ids(SPECIAL_TOKENS))
    with torch.no_grad():
        for i in range(len(tok)):
            text = tok.decode([i])
            if i in special or not (text.isascii() and text.isprintable()):
                llm.lm_head.weight[i].zero_()
        llm.lm_head.weight.mul_(20.0)  # sharper logits: answers that differ by prompt
    llm.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id, do_sample=False, max_new_tokens=16)
    return llm


def main(out: str) -> None:
    torch.manual_seed(0)
    tok = tokenizer()
    model(tok).save_pretrained(out)
    tok.save_pretrained(out)


if __name__ == "__main__":
    main(sys.argv[1])
