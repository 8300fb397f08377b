"""How far is a detox PPO step from what the models alone cost?

    python scripts/bench.py                          # quickstart models, batch 16, 40 new tokens, 1 thread
    python scripts/bench.py --epochs 4               # 4 PPO epochs
    python scripts/bench.py --size base --batch 4 --mini-batch 2 --new-tokens 16 --steps 3
    python scripts/bench.py --vs-commit ac62045      # this tree against another commit, interleaved
    python scripts/bench.py --vs-commit HEAD --this ppo.compile=true   # a setting against the default
    python scripts/bench.py --size base --memory     # peak memory: shared-base reference vs a frozen copy
    python scripts/bench.py --lengths recipe --vs-commit 3cfd0d8   # the recipe's shapes, vs a commit
    python scripts/bench.py --size base --device cuda --dtype bfloat16 --batch 16 --lengths recipe

In one process it alternates two ways of doing the same work on the same models and shapes:

1. the project's PPO step (`PPOTrainer.train_step`), timed by phase (generate, reward,
   forward = the rollout's no-grad forwards, optimise);
2. a raw-compute baseline in plain transformers / peft / torch, no framework: one `generate`
   with the same settings, the policy (+ value head) and reference forwards under no grad over
   the same rollout tensors, then `ppo_epochs x batch / mini_batch` forward + backward +
   AdamW steps (learning rate 0: the baseline never moves the weights the project trains).
   The project samples with its own loop (`generation.sampler=detox`), the baseline with
   `generate`; `--this generation.sampler=generate` times transformers' loop in the project.

and prints medians per phase, the ratio project / raw, and the peak memory (RSS on a CPU,
`torch.cuda.max_memory_allocated` on a GPU). `--vs-commit SHA` checks that commit out in a git
worktree and runs the same in a second process, alternating A B A B; `--json` prints one JSON
object. The first step of each side is warm-up and not counted.

`--new-tokens N` makes every response exactly N tokens (EOS suppressed until then), so both
sides and both commits do the same work; `--new-tokens MIN MAX` samples caps as a run does.
`--lengths recipe` (or `MIN:MAX`) draws each prompt's length from the recipe's 100-400 new
tokens (or the range given) and makes each response exactly that long, on the bundled
dialogues' prompts (200-1000 characters): the recipe's shapes, where one long row sets the
width of a padded batch. (The raw baseline computes on the padded batch, as plain code does.)
`--size bart-large` / `--size t5gemma-2b` build bart-large-cnn's (406M) / t5gemma-2b-2b's (5.6B,
in bf16) architecture instead (with `--no-raw`: the raw baseline is written for T5).
`--size base` builds a T5 with flan-t5-base's architecture (248M parameters) from its config
with random weights (nothing can be downloaded here), a synthetic 32128-piece tokenizer and a
roberta-base-sized random classifier (`--reward tiny`: the shipped tiny one), saves them to a
temp dir and loads them by path through the product's own code.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("generate", "reward", "forward", "optimise")


# ------------------------------------------------------------------------------ models and config
def build_real_size(size: str, root: str, reward: str) -> dict[str, str]:
    """A random policy of a real model's architecture, saved to `root` (and a reward classifier)."""
    if size == "base":
        return build_base_models(root, reward)
    paths = {"policy": (build_bart_large if size == "bart-large" else build_t5gemma_2b)(root)}
    if reward == "base":
        paths["reward"] = build_base_models(root, reward, policy=False)["reward"]
    return paths


def build_bart_large(root: str) -> str:
    """bart-large-cnn's architecture (406M): a byte-level tokenizer of its 50,265 ids, and its
    generation config's forced <s> (the family's quirk detox keeps out of the response)."""
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        GenerationConfig,
        RobertaTokenizerFast,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>"])}
    for ch in bytes_to_unicode().values():
        vocab.setdefault(ch, len(vocab))
    while len(vocab) < 50264:
        vocab[f"w{len(vocab)}"] = len(vocab)
    vocab["<mask>"] = len(vocab)
    config = BartConfig(vocab_size=50265, d_model=1024, encoder_layers=12, decoder_layers=12,
                        encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096,
                        decoder_ffn_dim=4096, max_position_embeddings=1024, bos_token_id=0, pad_token_id=1,
                        eos_token_id=2, decoder_start_token_id=2)
    torch.manual_seed(0)
    model = BartForConditionalGeneration(config)
    model.generation_config = GenerationConfig(bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2,
                                               forced_bos_token_id=0, num_beams=4, no_repeat_ngram_size=3)
    path = os.path.join(root, "bart-large")
    model.save_pretrained(path)
    RobertaTokenizerFast(vocab=vocab, merges=[]).save_pretrained(path)
    return path


def build_t5gemma_2b(root: str) -> str:
    """t5gemma-2b-2b's architecture (Gemma 2 2B encoder and decoder, about 5.6B parameters), built
    and saved in bf16, and a unigram tokenizer of its 256,000 ids."""
    from transformers import AutoModelForSeq2SeqLM, T5GemmaConfig, T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + c, -2.0) for c in "abcdefghijklmnopqrstuvwxyz#.,:"]
    pieces += [(f"\u2581w{i}", -10.0) for i in range(256000 - len(pieces))]
    module = dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                  num_attention_heads=8, num_key_value_heads=4, head_dim=256, pad_token_id=0, eos_token_id=1,
                  bos_token_id=2)
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_config(T5GemmaConfig(encoder=module, decoder=module, vocab_size=256000),
                                              dtype=torch.bfloat16)
    path = os.path.join(root, "t5gemma-2b")
    model.save_pretrained(path)
    T5Tokenizer(vocab=pieces, extra_ids=0).save_pretrained(path)
    return path


def build_base_models(root: str, reward: str, policy: bool = True) -> dict[str, str]:
    from transformers import (
        RobertaConfig,
        RobertaForSequenceClassification,
        RobertaTokenizerFast,
        T5Config,
        T5ForConditionalGeneration,
        T5Tokenizer,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + c, -2.0) for c in "abcdefghijklmnopqrstuvwxyz#.,:"]
    pieces += [(f"\u2581w{i}", -10.0) for i in range(32128 - len(pieces))]
    paths = {}
    tok = T5Tokenizer(vocab=pieces, extra_ids=0)
    config = T5Config(vocab_size=32128, d_model=768, d_ff=2048, d_kv=64, num_layers=12, num_heads=12,
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False, pad_token_id=0,
                      eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    if policy:
        paths["policy"] = os.path.join(root, "t5-base")
        T5ForConditionalGeneration(config).save_pretrained(paths["policy"])
        tok.save_pretrained(paths["policy"])
    if reward == "base":
        vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>"])}
        for ch in bytes_to_unicode().values():
            vocab.setdefault(ch, len(vocab))
        vocab["<mask>"] = len(vocab)
        rcfg = RobertaConfig(vocab_size=len(vocab), id2label={0: "nothate", 1: "hate"},
                             label2id={"nothate": 0, "hate": 1}, max_position_embeddings=514,
                             pad_token_id=1, bos_token_id=0, eos_token_id=2)
        paths["reward"] = os.path.join(root, "roberta-base")
        RobertaForSequenceClassification(rcfg).save_pretrained(paths["reward"])
        RobertaTokenizerFast(vocab=vocab, merges=[]).save_pretrained(paths["reward"])
    return paths


def overrides_for(args, paths: dict[str, str]) -> list[str]:
    """Hydra overrides for the benchmarked config (keys every commit since ac62045 knows)."""
    out = ["experiment=quickstart", "logger=none", f"device={args.device}", f"policy.dtype={args.dtype}",
           f"ppo.steps={args.steps + 1}", f"ppo.batch_size={args.batch}", f"ppo.mini_batch_size={args.mini_batch}",
           f"ppo.ppo_epochs={args.epochs}", "ppo.value_warmup_steps=0", "eval.enabled=false"]
    if "policy" in paths:
        modules = "[q,v]" if args.size == "base" else "all-linear"  # the recipe's modules; any family's
        out += [f"policy.name_or_path={paths['policy']}", "lora.r=32", "lora.alpha=32", f"lora.target_modules={modules}"]
    if "reward" in paths:
        out += [f"reward.name_or_path={paths['reward']}"]
    if args.lengths:  # each response exactly its cap: EOS suppressed past the largest one
        low, high = lengths_range(args.lengths)
        forced = high + 1
    else:  # N: EOS suppressed until N tokens (the decoder start token counts); MIN MAX: caps as a run draws them
        low, high = (args.new_tokens[0], args.new_tokens[0] + 1) if len(args.new_tokens) == 1 else args.new_tokens
        forced = low + 1 if len(args.new_tokens) == 1 else None
    out += [f"generation.max_new_tokens_min={low}", f"generation.max_new_tokens_max={high}"]
    if forced is not None:
        out += [f"generation.min_length={forced}"]
    if args.gen_batch:
        out += [f"generation.batch_size={args.gen_batch}"]
    return out + list(args.overrides)


RECIPE_LENGTHS = (100, 400)  # the recipe's caps: LengthSampler(100, 400) new tokens per prompt


def lengths_range(spec: str) -> tuple[int, int]:
    """`recipe` or `MIN:MAX`: the range response lengths are drawn from (uniform, per prompt)."""
    if spec == "recipe":
        return RECIPE_LENGTHS
    try:
        low, high = (int(x) for x in spec.split(":"))
    except ValueError:
        raise SystemExit(f"--lengths {spec!r}: use recipe or MIN:MAX (e.g. 20:200)") from None
    if not 0 < low < high:
        raise SystemExit(f"--lengths {spec!r}: need 0 < MIN < MAX")
    return low, high


def machine(args) -> dict:
    import peft
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "python": platform.python_version()}
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


# ------------------------------------------------------------------------------ the raw baseline
class RawBaseline:
    """The same work as a PPO step in plain transformers / peft / torch, on the project's own
    model objects (the LoRA-wrapped policy, its value head, the reward classifier)."""

    def __init__(self, trainer, cfg):
        self.cfg, self.device = cfg, trainer.device
        policy = trainer.policy
        self.model, self.head, self.tokenizer, self.gen_config = policy.model, policy.value_head, trainer.tokenizer, \
            trainer.gen_config
        # a transformers classifier with .model and .tokenizer: the reward's first component's (older commits:
        # the reward itself)
        components = getattr(trainer.reward, "components", None)
        component = next(iter(components.values())) if components else trainer.reward
        self.reward = getattr(component, "model", component)
        self.reward_input = str(getattr(component, "input", None) or cfg.reward.input)
        self.reference_copy = policy.reference_model if policy.reference_mode == "copy" else None
        config = self.model.config
        tied = getattr(config, "scale_decoder_outputs", getattr(config, "tie_word_embeddings", False))
        self.scale = config.d_model ** -0.5 if tied else 1.0
        half = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(cfg.policy.dtype)
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=half)) if half else contextlib.nullcontext
        head = list(self.head.parameters()) if self.head is not None else []  # critic-free: no value head
        trainable = [p for p in list(self.model.parameters()) + head if p.requires_grad]
        self.trainable = trainable
        self.optimizer = torch.optim.AdamW(trainable, lr=0.0)

    @contextlib.contextmanager
    def reference(self):
        if self.reference_copy is not None:
            yield self.reference_copy
        else:  # peft: the base model under the adapters
            with self.model.disable_adapter():
                yield self.model

    def _forward(self, model, input_ids, attention_mask, decoder_input_ids, labels, values: bool):
        with self.autocast():
            encoded = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            hidden = model.get_decoder()(input_ids=decoder_input_ids, encoder_hidden_states=encoded,
                                         encoder_attention_mask=attention_mask).last_hidden_state
            logits = model.get_output_embeddings()(hidden * self.scale)
        logprobs = torch.log_softmax(logits.float(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        return logprobs, self.head.summary(hidden.float()).squeeze(-1) if values and self.head is not None else None

    def step(self, rollout) -> dict[str, float]:
        r = Tensors(rollout)
        times = {}
        t0 = time.perf_counter()
        with torch.no_grad(), self.autocast():
            self.model.generate(input_ids=r.input_ids, attention_mask=r.attention_mask,
                                generation_config=self.gen_config, max_new_tokens=r.response_ids.shape[1])
        times["generate"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        with torch.no_grad():
            texts = ([p + s for p, s in zip(r.prompts, r.responses)] if self.reward_input == "prompt_response"
                     else r.responses)
            batch = self.reward.tokenizer(texts, padding=True, truncation=True, max_length=self.reward.max_length,
                                          return_tensors="pt").to(self.reward.device)
            self.reward.model(**batch).logits.softmax(-1)
        times["reward"] = time.perf_counter() - t0

        inputs = (r.input_ids, r.attention_mask, r.decoder_input_ids, r.response_ids)
        t0 = time.perf_counter()
        with torch.no_grad():
            old_logprobs, old_values = self._forward(self.model, *inputs, values=True)
            with self.reference() as reference:
                self._forward(reference, *inputs, values=False)
        times["forward"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        mask = r.mask
        advantages = (r.scores - r.scores.mean())[:, None].expand_as(mask)
        returns = old_values + advantages if old_values is not None else None
        ppo = self.cfg.ppo
        micro = ppo.mini_batch_size // ppo.gradient_accumulation_steps
        for _ in range(ppo.ppo_epochs):
            order = torch.randperm(len(mask)).to(self.device)
            for start in range(0, len(order), ppo.mini_batch_size):
                minibatch = order[start:start + ppo.mini_batch_size]
                for m in range(0, len(minibatch), micro):
                    rows = minibatch[m:m + micro]
                    logprobs, values = self._forward(self.model, *(x[rows] for x in inputs), values=True)
                    ratio = torch.exp(logprobs - old_logprobs[rows])
                    adv, w = advantages[rows], mask[rows]
                    pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - ppo.cliprange, 1 + ppo.cliprange))
                    if values is not None:
                        pg = pg + ppo.vf_coef * (values - returns[rows]) ** 2
                    loss = (pg * w).sum() / w.sum()
                    (loss / ppo.gradient_accumulation_steps).backward()
                if ppo.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(self.trainable, ppo.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        times["optimise"] = time.perf_counter() - t0
        times["total"] = sum(times[p] for p in PHASES)
        return times


# ------------------------------------------------------------------------------ one side
class Side:
    """One commit's trainer (this process's `detox`) and the raw baseline on its models."""

    def __init__(self, overrides: list[str], reference: str, raw: bool):
        from hydra import compose, initialize_config_module

        # Either layout: this tree's, or a commit's from before the subpackages (--vs-commit).
        register = from_either("detox.config.schema", "detox.schema", "register")
        build_ppo = from_either("detox.stages.assemble", "detox.stages", "build_ppo")
        with contextlib.suppress(ImportError):
            from_either("detox.core.logs", "detox.runs", "quiet_libraries")()
        register()
        logging.getLogger("detox").setLevel(logging.ERROR)  # e.g. the KL sign warning of min_length
        self.rss_before_models = _rss_now_gb()
        with initialize_config_module("detox.conf", version_base="1.3"):
            self.cfg = compose("config", overrides=overrides)
        self.trainer, _ = build_ppo(self.cfg)
        if reference == "copy":
            make_reference_a_frozen_copy(self.trainer.policy, self.cfg)
        self.raw = RawBaseline(self.trainer, self.cfg) if raw else None
        self.rollout = None
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def project(self) -> dict[str, float]:
        sync()
        t0 = time.perf_counter()
        _, self.rollout = self.trainer.train_step()
        sync()
        total = time.perf_counter() - t0
        times = {p: self.trainer.timings.get(f"perf/{p}_s", float("nan")) for p in PHASES}
        return {**times, "total": total, "response_tokens": float(self.rollout.mask.sum())}

    def baseline(self) -> dict[str, float]:
        sync()
        times = self.raw.step(self.rollout)
        sync()
        return times

    def memory(self) -> dict[str, float]:
        out = {"peak_rss_gb": _peak_rss_gb(), "peak_rss_above_libraries_gb": _peak_rss_gb() - self.rss_before_models}
        if torch.cuda.is_available():
            out["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 2**30
        return {k: round(v, 3) for k, v in out.items()}


def make_reference_a_frozen_copy(policy, cfg) -> None:
    """The other way to hold a reference: a second, frozen copy of the base model (what a
    framework without adapter-disabling does), for the memory comparison."""
    load_base_model = from_either("detox.models.assembly", "detox.policy", "load_base_model")

    device = next(policy.parameters()).device
    policy.reference_model = load_base_model(cfg.policy).to(device).eval().requires_grad_(False)
    policy.reference_mode = "copy"


def from_either(module: str, old_module: str, name: str):
    """`name` from `module`, or from `old_module` in a commit from before the layout step."""
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError:
        return getattr(importlib.import_module(old_module), name)


class Tensors:
    """A rollout's tensors by name, in either layout (its Seq2SeqBatch, or fields of its own)."""

    def __init__(self, rollout):
        self.rollout, self.batch = rollout, getattr(rollout, "batch", rollout)

    def __getattr__(self, name):
        if name in ("input_ids", "attention_mask", "decoder_input_ids", "response_ids", "mask"):
            return getattr(self.batch, name)
        return getattr(self.rollout, name)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _rss_now_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# ------------------------------------------------------------------------------ worker processes
def worker(args) -> None:
    """Serve `project` / `raw` / `memory` commands from stdin, one JSON line each (for --vs-commit)."""
    replies = os.fdopen(os.dup(1), "w")  # the protocol's own channel: whatever else prints goes to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    side = Side(json.loads(args.worker), args.reference, raw=args.worker_raw)
    print(json.dumps({"ready": True, "detox": os.path.dirname(sys.modules["detox"].__file__)}), file=replies, flush=True)
    for line in sys.stdin:
        command = line.strip()
        result = {"project": side.project, "raw": side.baseline, "memory": side.memory}[command]()
        print(json.dumps(result), file=replies, flush=True)


class Worker:
    def __init__(self, overrides: list[str], args, pythonpath: str | None = None, reference: str = "shared",
                 raw: bool = True):
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(overrides), "--threads",
               str(args.threads), "--reference", reference, *(["--raw"] if raw else [])]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"bench worker died (exit {self.proc.wait()}); run it alone to see its error")
        return json.loads(line)

    def __call__(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def worktree(sha: str) -> str:
    """A git worktree of `sha` in a temp dir, importable as `detox` (its conf/ linked in)."""
    path = os.path.join(tempfile.gettempdir(), f"detox-bench-{sha[:12]}")
    if not os.path.isdir(path):
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "-f", path, sha], check=True,
                       capture_output=True)
    conf = os.path.join(path, "detox", "conf")
    if not os.path.exists(conf):  # an editable install maps detox.conf to conf/; a plain path does not
        os.symlink(os.path.join(path, "conf"), conf)
    return path


# ------------------------------------------------------------------------------ summary
def medians(rows: list[dict]) -> dict[str, float]:
    rows = rows[1:] or rows  # the first step includes warm-up
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def table(title: str, columns: dict[str, dict[str, float]], ratios: dict[str, tuple[str, str]]) -> str:
    keys = [*PHASES, "total"]
    head = f"{title:<12}" + "".join(f"{c:>12}" for c in [*columns, *ratios])
    lines = [head, "-" * len(head)]
    for k in keys:
        cells = [f"{columns[c].get(k, float('nan')):>12.3f}" for c in columns]
        cells += [f"{columns[a][k] / columns[b][k]:>12.2f}" if columns[b].get(k) else f"{'':>12}"
                  for a, b in ratios.values()]
        lines.append(f"{k + ' s':<12}" + "".join(cells))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["tiny", "base", "bart-large", "t5gemma-2b"], default="tiny",
                    help="tiny: the quickstart's models; the others: random models of flan-t5-base's, "
                         "bart-large-cnn's or t5gemma-2b-2b's architecture")
    ap.add_argument("--reward", choices=["tiny", "base"], default="base", help="with a real --size")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per side (plus one warm-up step)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--mini-batch", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, nargs="+", default=[40], metavar="N")
    ap.add_argument("--lengths", default=None, metavar="recipe|MIN:MAX",
                    help="response lengths drawn per prompt from [MIN, MAX) (recipe: 100:400, the recipe's caps), "
                         "each response exactly its length; the prompts are the bundled dialogues (200-1000 "
                         "characters). Replaces --new-tokens")
    ap.add_argument("--gen-batch", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-raw", dest="raw", action="store_false", help="skip the raw baseline")
    ap.add_argument("--vs-commit", default=None, metavar="SHA",
                    help="also time another commit (HEAD: this code without uncommitted changes)")
    ap.add_argument("--this", nargs="+", default=[], metavar="OVERRIDE",
                    help="with --vs-commit: overrides for this tree only, e.g. --this ppo.compile=true")
    ap.add_argument("--memory", action="store_true",
                    help="peak memory with the shared-base reference vs a frozen copy (two processes)")
    ap.add_argument("--reference", choices=["shared", "copy"], default="shared")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--raw", dest="worker_raw", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.worker is not None:
        return worker(args)
    if len(args.new_tokens) not in (1, 2):
        ap.error("--new-tokens takes N (exactly N tokens) or MIN MAX")

    tmp = tempfile.mkdtemp(prefix="detox-bench-")
    if args.size in ("bart-large", "t5gemma-2b") and args.raw:
        ap.error("the raw baseline is written for T5: pass --no-raw with --size bart-large / t5gemma-2b")
    paths = build_real_size(args.size, tmp, args.reward) if args.size != "tiny" else {}
    overrides = [f"output_dir={tmp}/run", *overrides_for(args, paths)]
    report = {"machine": machine(args), "size": args.size, "device": args.device, "dtype": args.dtype,
              "batch": args.batch, "mini_batch": args.mini_batch, "epochs": args.epochs,
              "new_tokens": args.new_tokens, "lengths": args.lengths, "steps": args.steps, "overrides": overrides[1:], "this": args.this}

    if args.memory:
        sides = {ref: Worker(overrides, args, reference=ref, raw=False) for ref in ("shared", "copy")}
        for ref, w in sides.items():
            for _ in range(2):
                w("project")
            report[f"memory_{ref}_reference"] = w("memory")
            w.close()
        s, c = report["memory_shared_reference"], report["memory_copy_reference"]
        report["memory_ratio_shared_vs_copy"] = {k: round(s[k] / c[k], 3) for k in s}
        text = "\n".join(f"{k:<32} shared {s[k]:8.3f}   copy {c[k]:8.3f}   ratio {s[k] / c[k]:.3f}" for k in s)
    elif args.vs_commit:
        sha = subprocess.run(["git", "-C", ROOT, "rev-parse", args.vs_commit], check=True, capture_output=True,
                             text=True).stdout.strip()
        here = Worker(overrides + args.this, args, pythonpath=ROOT, raw=args.raw)
        there = Worker(overrides, args, pythonpath=worktree(sha), raw=False)
        rows = {"this": [], "raw": [], sha[:8]: []}
        for _ in range(args.steps + 1):  # A B A B ...
            rows["this"].append(here("project"))
            if args.raw:
                rows["raw"].append(here("raw"))
            rows[sha[:8]].append(there("project"))
        report["memory"] = {"this": here("memory"), sha[:8]: there("memory")}
        here.close(), there.close()
        columns = {k: medians(v) for k, v in rows.items() if v}
        ratios = {f"/{sha[:8]}": ("this", sha[:8]), **({"/raw": ("this", "raw")} if args.raw else {})}
        report.update(medians=columns, ratios={name: {k: columns[a][k] / columns[b][k] for k in [*PHASES, "total"]
                                                      if columns[b].get(k)} for name, (a, b) in ratios.items()})
        text = table("median", columns, ratios) + "".join(f"\npeak memory, {k}: {v}" for k, v in report["memory"].items())
    else:
        side = Side(overrides, args.reference, raw=args.raw)
        rows = {"project": [], "raw": []}
        for _ in range(args.steps + 1):
            rows["project"].append(side.project())
            if args.raw:
                rows["raw"].append(side.baseline())
        report["memory"] = side.memory()
        columns = {k: medians(v) for k, v in rows.items() if v}
        ratios = {"project/raw": ("project", "raw")} if args.raw else {}
        report.update(medians=columns, ratios={name: {k: columns[a][k] / columns[b][k] for k in [*PHASES, "total"]
                                                      if columns[b].get(k)} for name, (a, b) in ratios.items()})
        text = table("median", columns, ratios) + f"\npeak memory: {report['memory']}"
    if args.json:
        print(json.dumps(report))
    else:
        m = report["machine"]
        what = "peak memory over 2 steps" if args.memory else f"medians of {args.steps} steps"
        print(f"{args.size} on {args.device} ({m['cpu']}, {m['threads']} threads), {args.dtype}, batch {args.batch}, "
              f"mini-batch {args.mini_batch}, {args.epochs} epoch(s), "
              + (f"lengths {args.lengths} {lengths_range(args.lengths)}, " if args.lengths else f"new tokens {args.new_tokens}, ")
              + f"{what}; torch {m['torch']}, transformers {m['transformers']}")
        print(text)


if __name__ == "__main__":
    main()
