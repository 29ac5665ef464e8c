"""`portrait prompt IDEA`: print the concept, keywords by category, the chosen 15 and the prompt."""

from __future__ import annotations

import argparse
import sys

from .errors import PromptAgentError


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `prompt` subcommand to an argparse subparsers object."""
    parser = subparsers.add_parser("prompt", help="turn a short idea into an SDXL portrait prompt",
                                   description="Turn a short idea (e.g. 'corporate confidence') into an "
                                   "SDXL portrait prompt. Offline unless PORTRAIT_LLM_PROVIDER is set.")
    parser.add_argument("idea", help="a short idea, at most 60 characters")
    parser.add_argument("--class-word", help="identity class word kept in the prompt, e.g. woman")
    parser.add_argument("--trigger", help="identity trigger word after the class word, e.g. img")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Handle `prompt`; a bad idea or bad settings print one line to stderr and return 2."""
    from .agent import build_prompt  # imported here so `portrait --help` stays fast

    try:
        result = build_prompt(args.idea, class_word=args.class_word, trigger=args.trigger)
    except PromptAgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.model_dump_json(indent=2) if args.json else format_result(result))
    return 0


def format_result(result) -> str:
    """Human-readable rendering of a PromptResult."""
    width = max(map(len, result.keywords_by_category))
    lines = [f"Idea: {result.idea}", "", "Concept:", f"  {result.concept}", "", "Keywords:"]
    lines += [f"  {c:<{width}}  {', '.join(ws)}" for c, ws in result.keywords_by_category.items()]
    lines += ["", f"Chosen ({len(result.chosen)}): {', '.join(result.chosen)}", "",
              f"Prompt: {result.prompt}", f"Negative prompt: {result.negative_prompt}",
              "Sources: " + ", ".join(f"{node}={src}" for node, src in result.sources.items())]
    lines += [f"Note: {note}" for note in result.notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: `python -m prompt_agent.cli prompt IDEA`."""
    parser = argparse.ArgumentParser(prog="portrait")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
