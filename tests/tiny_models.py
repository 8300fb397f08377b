"""Tiny random models built from configs and saved to folders, so tests load them by path
through the same code that loads flan-t5 and the real reward model from the hub."""

from __future__ import annotations

import json
import os

import torch
from transformers import (
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
    RobertaConfig,
    RobertaForSequenceClassification,
    RobertaTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
    T5Tokenizer,
)

WORDS = ("the a and to of is you are it that summary conversation following person dialogue "
         "idiot stupid nice thanks please buy sell car book dinner work meet tomorrow calls asks "
         "agrees says wants help").split()


def t5_tokenizer() -> T5Tokenizer:
    """A unigram tokenizer with T5's ids (pad 0, eos 1, unk 2): specials, words, then characters."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("#Person1#", -1.0), ("#Person2#", -1.0)]
    pieces += [("\u2581" + w, -2.0) for w in WORDS]
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?:;'#-"
    pieces += [("\u2581", -3.0)] + [(c, -5.0) for c in chars] + [("\u2581" + c, -4.0) for c in chars]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def save_tiny_t5(path: str, seed: int = 0) -> str:
    tok = t5_tokenizer()
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tok), d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2,
        d_kv=16, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, dropout_rate=0.1,
    )
    model = T5ForConditionalGeneration(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def roberta_tokenizer() -> RobertaTokenizerFast:
    """Byte-level, no merges: every byte a token, plus RoBERTa's specials."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>"])}
    for ch in bytes_to_unicode().values():
        vocab.setdefault(ch, len(vocab))
    vocab["<mask>"] = len(vocab)
    return RobertaTokenizerFast(vocab=vocab, merges=[])


def save_tiny_classifier(path: str, id2label: dict[int, str], seed: int = 0,
                         problem_type: str | None = None, bias: list[float] | None = None) -> str:
    tok = roberta_tokenizer()
    torch.manual_seed(seed)
    config = RobertaConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=130, id2label=id2label,
        label2id={v: k for k, v in id2label.items()}, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        problem_type=problem_type,
    )
    model = RobertaForSequenceClassification(config)
    if bias is not None:  # push the logits apart, e.g. to make one label win everywhere
        with torch.no_grad():
            model.classifier.out_proj.bias.copy_(torch.tensor(bias))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_dialogues(path: str, n: int = 40) -> str:
    """A small DialogSum-style jsonl; every third dialogue is heated."""
    with open(path, "w") as f:
        for i in range(n):
            heated = i % 3 == 0
            turns = [f"#Person1#: Can you help me buy a book for dinner number {i} tomorrow please?",
                     "#Person2#: " + ("You are a stupid idiot, but yes." if heated else "Yes, thanks, nice idea."),
                     "#Person1#: Thanks, I will meet you at work tomorrow then, it is a plan.",
                     "#Person2#: Fine, see you at work tomorrow and bring the book you want to buy."]
            summary = "#Person1# asks #Person2# to help buy a book."
            clean = summary
            if heated:
                summary += " #Person2# calls #Person1# a stupid idiot."
            f.write(json.dumps({"id": f"d{i}", "dialogue": "\n".join(turns), "summary": summary,
                                "summary_clean": clean, "topic": "shopping", "heated": heated}) + "\n")
    return path


def tiny_assets(root: str) -> dict[str, str]:
    os.makedirs(root, exist_ok=True)
    return {
        "policy": save_tiny_t5(os.path.join(root, "t5")),
        "reward": save_tiny_classifier(os.path.join(root, "clf"), {0: "nothate", 1: "hate"}),
        "data": write_dialogues(os.path.join(root, "dialogues.jsonl")),
    }


class LengthScore:
    """A reward component for tests: the number of words of each response; keeps the node it
    was built from."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def __call__(self, prompts, responses, **columns):
        return torch.tensor([float(len(r.split())) for r in responses])


def teacher_forced(input_ids, attention_mask, decoder_input_ids):
    """A `Seq2SeqBatch` that feeds `decoder_input_ids` to the decoder (as a rollout's does), for
    tests that compare logits position by position; its response tokens are the inputs shifted left."""
    from detox.models.families import Seq2SeqBatch

    response_ids = torch.cat([decoder_input_ids[:, 1:], decoder_input_ids[:, :1]], 1)
    return Seq2SeqBatch(input_ids, attention_mask, decoder_input_ids, response_ids,
                        torch.ones(decoder_input_ids.shape, dtype=torch.float32))


class NaNClassifier:
    """The shipped classifier reward component, returning NaN for the calls numbered in `bad`
    (1-based; set by the test): `reward._target_=tiny_models.NaNClassifier`."""

    bad: set = set()

    def __init__(self, **node):
        from detox.models.rewards import Classifier

        self.classifier, self.calls = Classifier(**node), 0
        self.id2label, self.label = self.classifier.id2label, self.classifier.label

    def __call__(self, prompts, responses, **columns):
        self.calls += 1
        scores = self.classifier(prompts, responses)
        return torch.full_like(scores, float("nan")) if self.calls in self.bad else scores

    def probs(self, texts):
        return self.classifier.probs(texts)


class ListTracker:
    """A tracker added by a test from its own yaml: keeps what it is told in a JSON file."""

    def __init__(self, run_dir, config, start_step=0, path="list_tracker.json", label="x"):
        self.path, self.seen = os.path.join(run_dir, path), {"label": label, "config": config, "steps": [],
                                                             "summary": {}, "tables": [], "finished": None}

    def log(self, metrics, step):
        self.seen["steps"].append({"step": step, **metrics})

    def log_table(self, key, rows, step):
        self.seen["tables"].append(key)

    def summary(self, values):
        self.seen["summary"].update(values)

    def finish(self, exit_code=0, preempted=False):
        self.seen["finished"] = exit_code
        with open(self.path, "w") as f:
            json.dump(self.seen, f)


class NeedsMissingPackage:
    """A tracker whose package is not installed."""

    def __init__(self, run_dir, config, start_step=0):
        import detox_no_such_package  # noqa: F401


# ------------------------------------------------------------------------------ a family detox does not know
class TowerConfig(PretrainedConfig):
    """An encoder-decoder whose sizes and special tokens live in a nested `text` config (as
    T5Gemma's live under `encoder` / `decoder`): the generic family adapter cannot read them."""

    model_type = "detox_test_tower"

    def __init__(self, text: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.text = text or {}
        self.is_encoder_decoder = True


class TowerForConditionalGeneration(PreTrainedModel, GenerationMixin):
    """A T5 inside a wrapper: encoder, decoder and generation are the inner model's."""

    config_class = TowerConfig
    base_model_prefix = "tower"

    def __init__(self, config: TowerConfig):
        super().__init__(config)
        self.tower = T5ForConditionalGeneration(T5Config(**config.text))
        self.post_init()

    def get_encoder(self):
        return self.tower.get_encoder()

    def get_decoder(self):
        return self.tower.get_decoder()

    def forward(self, **inputs):
        return self.tower(**inputs)

    def generate(self, *args, **kwargs):
        return self.tower.generate(*args, **kwargs)


def save_tiny_tower(path: str, seed: int = 0) -> str:
    """A tiny random tower model and its tokenizer, loadable by AutoModelForSeq2SeqLM in this process."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if TowerConfig.model_type not in CONFIG_MAPPING:
        AutoConfig.register("detox_test_tower", TowerConfig)
        AutoModelForSeq2SeqLM.register(TowerConfig, TowerForConditionalGeneration)
    tok = t5_tokenizer()
    torch.manual_seed(seed)
    text = dict(vocab_size=len(tok), d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2, d_kv=16,
                pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, dropout_rate=0.1)
    TowerForConditionalGeneration(TowerConfig(text=text)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


# ------------------------------------------------------------------------------ every encoder-decoder family
# Tiny random models of each family transformers ships, built from their configs. T5-like families
# read our unigram tokenizer (pad 0, eos 1, unk 2; the decoder starts with pad); BART-like ones the
# byte-level one with RoBERTa's ids (<s> 0, <pad> 1, </s> 2; the decoder starts with </s>).
T5_IDS = dict(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
BART_IDS = dict(bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2)
T5_SIZES = dict(d_model=32, d_ff=64, d_kv=16, num_layers=2, num_decoder_layers=2, num_heads=2, dropout_rate=0.1)
BART_SIZES = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                  encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=512, dropout=0.1)


def _gemma_module(vocab: int, **extra) -> dict:
    return dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, sliding_window=32,
                max_position_embeddings=512, pad_token_id=0, eos_token_id=1, bos_token_id=2, **extra)


def family_config(family: str, vocab: int):
    """(config, tokenizer kind) of a tiny random model of `family` (a transformers model_type)."""
    import transformers as tf

    if family in ("t5", "mt5", "umt5"):
        cls = {"t5": tf.T5Config, "mt5": tf.MT5Config, "umt5": tf.UMT5Config}[family]
        return cls(vocab_size=vocab, **T5_SIZES, **T5_IDS), "t5"
    if family == "longt5":
        return tf.LongT5Config(vocab_size=vocab, **T5_SIZES, **T5_IDS, local_radius=8, global_block_size=4,
                               encoder_attention_type="transient-global"), "t5"
    if family == "switch_transformers":
        return tf.SwitchTransformersConfig(vocab_size=vocab, **T5_SIZES, **T5_IDS, num_experts=2, expert_capacity=64,
                                           num_sparse_encoder_layers=1, num_sparse_decoder_layers=1), "t5"
    if family == "t5gemma":
        module = _gemma_module(vocab)
        return tf.T5GemmaConfig(encoder=module, decoder=module, vocab_size=vocab), "t5"
    if family == "t5gemma2":
        from transformers.models.t5gemma2.configuration_t5gemma2 import (
            T5Gemma2DecoderConfig,
            T5Gemma2EncoderConfig,
        )

        vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                      patch_size=14)
        encoder = T5Gemma2EncoderConfig(text_config=_gemma_module(vocab), vision_config=vision, mm_tokens_per_image=4,
                                        boi_token_index=vocab - 3, eoi_token_index=vocab - 2,
                                        image_token_index=vocab - 1)
        decoder = T5Gemma2DecoderConfig(**_gemma_module(vocab))
        return tf.T5Gemma2Config(encoder=encoder, decoder=decoder, image_token_index=vocab - 1,
                                 eoi_token_index=vocab - 2), "t5"
    if family == "pegasus":
        return tf.PegasusConfig(vocab_size=vocab, **BART_SIZES, **T5_IDS), "t5"
    if family == "marian":
        return tf.MarianConfig(vocab_size=vocab, decoder_vocab_size=vocab, **BART_SIZES, **T5_IDS), "t5"
    if family in ("bart", "mbart"):
        cls = {"bart": tf.BartConfig, "mbart": tf.MBartConfig}[family]
        return cls(vocab_size=vocab, **BART_SIZES, **BART_IDS), "bart"
    if family == "led":
        sizes = {k: v for k, v in BART_SIZES.items() if k != "max_position_embeddings"}
        return tf.LEDConfig(vocab_size=vocab, **sizes, **BART_IDS, attention_window=[16, 16],
                            max_encoder_position_embeddings=1024, max_decoder_position_embeddings=512), "bart"
    raise ValueError(f"no tiny config for {family!r}")


FAMILIES = ("t5", "mt5", "umt5", "longt5", "switch_transformers", "t5gemma", "t5gemma2", "bart", "mbart", "pegasus",
            "marian", "led")


def save_tiny_family(family: str, path: str, seed: int = 0, forced_bos: bool = False) -> str:
    """A tiny random model of `family` and its tokenizer at `path`, loadable by AutoModelForSeq2SeqLM.
    forced_bos: its generation_config.json forces `<s>` first, as bart-large-cnn's does (with
    beams, n-gram blocking and a length penalty that detox must not take over)."""
    from transformers import AutoModelForSeq2SeqLM, GenerationConfig

    probe_config, kind = family_config(family, 1000)
    tok = t5_tokenizer() if kind == "t5" else roberta_tokenizer()
    config, _ = family_config(family, len(tok))
    torch.manual_seed(seed)
    model = AutoModelForSeq2SeqLM.from_config(config)
    if forced_bos:
        model.generation_config = GenerationConfig(**{k: v for k, v in BART_IDS.items()}, forced_bos_token_id=0,
                                                   forced_eos_token_id=2, num_beams=4, no_repeat_ngram_size=3,
                                                   length_penalty=2.0, min_length=30, max_length=60)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def decode_both(model, family, tokens, enc, gen, caps):
    """The same prompts decoded by detox's sampler and by `generate` (caps [B] sampled tokens):
    (ours, theirs) sequences and their `Seq2SeqBatch`es."""
    from detox.models.sampling import sample

    with torch.no_grad():
        states = family.encode(model, enc["input_ids"], enc["attention_mask"]).last_hidden_state
        ours = sample(model, family, tokens, states, enc["attention_mask"], gen, caps)
        theirs = model.generate(**enc, generation_config=gen, max_new_tokens=int(caps.max()) + tokens.prefix_length - 1)
    as_batch = [family.to_batch(enc["input_ids"], enc["attention_mask"], s, tokens, caps) for s in (ours, theirs)]
    return ours, theirs, as_batch


# ------------------------------------------------------------------------------ reward components of tests
def mentions_column(prompts, responses, *, column="topic", **columns):
    """1 where a response mentions its row's value of the dataset column `column`, else 0."""
    return [float(str(value).lower() in r.lower()) for r, value in zip(responses, columns[column])]


def two_scores(prompts, responses, **columns):
    return [0.0, 1.0]


def words(prompts, responses, **columns):
    return ["good"] * len(responses)


def nan_scores(prompts, responses, **columns):
    return [float("nan")] * len(responses)
