"""Generate command: greedy continuations of the same prompts by a causal LM and, with ``--compare``, by another
(its compressed copy), side by side (:func:`lowrank.generation.compare_generations`).

python -m lowrank generate --model smollm2-135m --compare out/smollm2-kfac-60 --prompt "The city" --tokens 32
"""

from __future__ import annotations

from lowrank.cli.args import add_common
from lowrank.compress import load_any
from lowrank.generation import DEFAULT_PROMPTS, DEFAULT_TOKENS, MAX_TOKENS, compare_generations
from lowrank.validate import Range, arg_type


def register(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="greedy text from a causal LM, side by side with another (e.g. its compressed copy)",
        description="The same prompts through --model and --compare: greedy decoding, a fixed number of new tokens "
        "(fewer only when the model ends the text), so the two differ only by their weights.",
    )
    add_common(p)
    p.add_argument(
        "--model", required=True, help="a causal LM: packaged name, Hugging Face folder or compressed folder"
    )
    p.add_argument("--compare", help="a second causal LM to run the same prompts through (e.g. the compressed folder)")
    p.add_argument(
        "--prompt",
        action="append",
        help=f"a prompt to continue (repeat for several; default: {len(DEFAULT_PROMPTS)} built-in prompts)",
    )
    p.add_argument(
        "--tokens",
        type=arg_type(Range(1, MAX_TOKENS, integer=True), "--tokens"),
        default=DEFAULT_TOKENS,
        help=f"new tokens per prompt (default {DEFAULT_TOKENS}, at most {MAX_TOKENS})",
    )
    p.set_defaults(handler=generate_command)


def generate_command(args):
    prompts = args.prompt or list(DEFAULT_PROMPTS)
    labels = [args.model] + ([args.compare] if args.compare else [])
    if len(set(labels)) < len(labels):
        raise ValueError("--compare names the same model as --model: give another one")
    models = {label: load_any(label, args.device) for label in labels}
    table = compare_generations(models, prompts, args.tokens, args.device)
    blocks = []
    for row in table.to_dict("records"):
        blocks.append("\n".join([f"prompt: {row['prompt']}", *(f"  {label}: {row[label]!r}" for label in labels)]))
    data = {"tokens": args.tokens, "models": labels, "generations": table.to_dict("records")}
    return data, "\n\n".join(blocks) + f"\n\n(greedy, at most {args.tokens} new tokens)"
