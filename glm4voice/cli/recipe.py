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


def _run_recipe(args) -> int:
    from ..errors import Glm4VoiceError
    from ..recipe import run_stages
    from ..recipe.tiny import stages

    chosen = stages(smoke=args.smoke)
    names = [s.name for s in chosen]
    if args.until is not None and args.until not in names:
        raise Glm4VoiceError(f"--until {args.until!r}: the stages are {', '.join(names)}")
    run_stages(chosen, args.out, until=args.until)
    print(f"glm4voice recipe: {args.out}/bundle/bundle (stages: {', '.join(names)})", file=sys.stderr)
    return 0


def add(sub) -> None:
    _add_recipe(sub)
