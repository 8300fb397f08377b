"""`detox-generate MODEL [INPUT]`: summarize dialogues with a trained policy (detox/stages/summarize.py).

Writes JSON lines (id, dialogue, summary [, start_summary] [, toxicity, start_toxicity]) to
stdout or `-o FILE`; logs and the progress bar go to stderr. A bad input is one line on
stderr and exit code 2, as for `detox`.
"""

from __future__ import annotations

import argparse
import logging
import sys

EXAMPLES = """examples:
  detox-generate outputs/2026-12-02/10-00-00 dialogues.jsonl --compare --judges profanity
  detox-generate outputs/2026-12-02/10-00-00/export chats.txt -o summaries.jsonl
  cat dialogues.jsonl | detox-generate google/flan-t5-base --sample --seed 1
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="detox-generate", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="Summarize dialogues with what a detox run trained. Greedy by default; the run's own prompt "
                    "template and input truncation apply.")
    p.add_argument("model", metavar="MODEL", help="a run dir (its final/, else its newest checkpoint, with a "
                   "warning), an export folder (detox stage=export), or any seq2seq model path / hub id")
    p.add_argument("input", metavar="INPUT", nargs="?", default="-",
                   help=".jsonl / .json / .csv / .parquet with a dialogue column, or a text file with one dialogue "
                        "per blank-line-separated block; - or absent: stdin (JSON lines or text)")
    p.add_argument("-o", "--output", help="the .jsonl to write (atomically); default: stdout")
    p.add_argument("--compare", action="store_true", help="add the starting policy's summary (start_summary)")
    p.add_argument("--judges", default="", help="comma-separated toxicity judges, as eval.judges: reward, "
                   "profanity, or an HF classifier path[:label]; adds each summary's P(toxic)")
    p.add_argument("--sample", action="store_true", help="sample with the run's generation settings (default: greedy)")
    p.add_argument("--seed", type=int, default=0, help="the sampling seed (default 0)")
    p.add_argument("--batch-size", type=int, default=16, help="dialogues per generate() call (default 16)")
    p.add_argument("--max-new-tokens", type=int, help="default: the run's generation.max_new_tokens_max")
    p.add_argument("--column", default="dialogue", help="the input table's dialogue column (default: dialogue)")
    p.add_argument("--id-column", default="id", help="the input table's id column, kept when present (default: id)")
    p.add_argument("--prompt-template", help="the prompt, with {dialogue}; default: the run's, or for a plain "
                   "model the recipe's")
    p.add_argument("--max-input-tokens", type=int, help="prompts are cut (the dialogue's end) to this many tokens; "
                   "default: the run's, or 512")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="detox-generate: %(levelname)s: %(message)s")
    logging.getLogger("detox").setLevel(logging.INFO)
    # Imported here: --help answers without loading torch and transformers.
    from detox.config.schema import register
    from detox.core.errors import DetoxError
    from detox.core.logs import quiet_libraries
    from detox.stages.summarize import Request, summarize_dialogues

    register()  # the resolvers a run's saved config uses (detox_asset)
    quiet_libraries()
    request = Request(
        model=args.model, input=args.input, output=args.output, column=args.column, id_column=args.id_column or None,
        compare=args.compare, judges=[j.strip() for j in args.judges.split(",") if j.strip()], sample=args.sample,
        seed=args.seed, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
        prompt_template=args.prompt_template, max_input_tokens=args.max_input_tokens, device=args.device)
    try:
        summarize_dialogues(request)
    except DetoxError as e:
        print(f"detox-generate: {type(e).__name__}: {e}".replace("\n", " "), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
