#!/usr/bin/env python3
"""Build the tiny seeded default model set under PORTRAIT_MODELS (or --out)."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from portrait.models.tiny import build_tiny_model_set  # noqa: E402
from portrait.settings import get_settings  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--out", type=Path, default=None, help="models directory (default: PORTRAIT_MODELS)")
parser.add_argument("--force", action="store_true", help="rebuild even if present")
args = parser.parse_args()
out = build_tiny_model_set(args.out or get_settings().models_dir, force=args.force)
print(out)
