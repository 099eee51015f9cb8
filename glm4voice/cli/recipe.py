"""`glm4voice recipe`: the training stages in order, resumable (glm4voice.recipe)."""

from __future__ import annotations

import sys

from .common import add_command


def _add_recipe(sub) -> None:
    p = add_command(sub, "recipe", "train the whole system stage by stage (resumable): `recipe tiny`", _run_recipe)
    p.add_argument("name", choices=["tiny"], help="which recipe: tiny = this project's CPU-sized one")
    p.add_argument("--out", required=True, help="recipe folder: one sub-folder per stage, done.json when finished")
    p.add_argument("--smoke", action="store_true", help="every stage on a handful of rows, in seconds")
    p.add_argument("--until", help="stop after this stage")
    p.add_argument("--only", help="run this stage alone (the stages it reads must be done): e.g. the vocoder in a "
                   "second process beside the tokenizer stage")  # fmt: skip


def _run_recipe(args) -> int:
    from ..errors import Glm4VoiceError
    from ..recipe import run_stages
    from ..recipe.tiny import stages

    chosen = stages(smoke=args.smoke)
    names = [s.name for s in chosen]
    for flag, value in (("--until", args.until), ("--only", args.only)):
        if value is not None and value not in names:
            raise Glm4VoiceError(f"{flag} {value!r}: the stages are {', '.join(names)}")
    if args.until is not None and args.only is not None:
        raise Glm4VoiceError("give --until or --only, not both")
    done = run_stages(chosen, args.out, until=args.until, only=args.only)
    made = f"the bundle: {done['bundle']['bundle']}" if "bundle" in done else f"stages done: {', '.join(done)}"
    print(f"glm4voice recipe: {made} (stages: {', '.join(names)})", file=sys.stderr)
    return 0


def add(sub) -> None:
    _add_recipe(sub)
