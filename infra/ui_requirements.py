"""The UI image's requirements, read from pyproject.toml so that every pin stays written once.

The `ui` and `agent` extras (the browser-test driver left out) and the core dependencies the UI's imports reach
(UI_CORE: checked in tests/unit/test_infra.py); tritonclient with its gRPC and HTTP clients only (no perf_analyzer).
torch is not listed: the image installs the CPU wheel from its build context first.

usage: python3 infra/ui_requirements.py pyproject.toml > ui-requirements.txt
"""

from __future__ import annotations

import re
import sys
import tomllib

UI_CORE = ("numpy", "pillow", "tritonclient", "protobuf", "tqdm", "transformers", "tokenizers", "safetensors",
           "accelerate")
LEFT_OUT = ("playwright",)


def name(requirement: str) -> str:
    return re.split(r"[<>=!\[; ]", requirement, maxsplit=1)[0].lower()


def requirements(pyproject: dict) -> list[str]:
    project = pyproject["project"]
    found = [r for r in project["dependencies"] if name(r) in UI_CORE]
    missing = set(UI_CORE) - {name(r) for r in found}
    if missing:
        raise SystemExit(f"pyproject.toml no longer lists {sorted(missing)}")
    found += [r for extra in ("ui", "agent") for r in project["optional-dependencies"][extra] if name(r) not in LEFT_OUT]
    return list(dict.fromkeys(r.replace("tritonclient[all]", "tritonclient[grpc,http]") for r in found))


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as file:
        print("\n".join(requirements(tomllib.load(file))))
