"""The before/after table of docs/prompt_agent.md: the offline choice for 20 ideas, from another tree and this one.

    git archive 7ec8601 prompt_agent | tar -x -C /tmp/old
    python -m prompt_agent.before_after /tmp/old > table.md

Each tree runs in its own interpreter (both are the package `prompt_agent`). Before: keywords that this
version's rule calls contradictions are in bold. After: neutral craft keywords are in italics.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

IDEAS = ["corporate confidence", "fearless explorer", "dark melancholy", "ocean calm", "winter solitude",
         "volcano fury", "joyful summer", "rainy noir", "tragic hero", "quiet dawn", "futuristic rebel",
         "victorian elegance", "serene garden", "anxious city", "proud warrior", "lonely astronaut",
         "playful childhood", "gothic romance", "golden hour nostalgia", "stormy sea"]
_CHOOSE = """import json, sys
sys.path.insert(0, sys.argv[1])
from prompt_agent import AgentSettings, build_prompt
settings = AgentSettings(provider="none", cache_dir=None)
print(json.dumps([build_prompt(i, settings=settings, use_cache=False).chosen for i in json.loads(sys.argv[2])]))
"""


def chosen_in(tree: Path) -> list[list[str]]:
    """The chosen keywords per idea with the prompt_agent package found under tree (the project beside it)."""
    project = Path(__file__).resolve().parent.parent
    code = _CHOOSE.replace("sys.path.insert(0, sys.argv[1])",
                           f"sys.path[:0] = [sys.argv[1], {str(project)!r}]")
    out = subprocess.run([sys.executable, "-c", code, str(tree), json.dumps(IDEAS)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(old_tree: str) -> None:
    from .offline import load_craft
    from .polarity import contradiction

    before, after = chosen_in(Path(old_tree)), chosen_in(Path(__file__).resolve().parent.parent)
    craft = set(load_craft())
    print("| idea | before | after |\n|---|---|---|")
    for idea, old, new in zip(IDEAS, before, after):
        old_text = ", ".join(f"**{w}**" if contradiction(w, idea) else w for w in old)
        new_text = ", ".join(f"_{w}_" if w in craft else w for w in new)
        print(f"| {idea} | {old_text} | {new_text} |")


if __name__ == "__main__":
    main(sys.argv[1])
