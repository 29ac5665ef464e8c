#!/usr/bin/env python3
"""The photos `make demo` uses, all shipped inside installed packages (nothing downloaded): scikit-image's astronaut
(face.png), insightface's group photo t1.jpg (group.png) and two of its people cropped from it (person1.png,
person2.png: the man at the top right and the man in the middle), so that `portrait detail --assign match` on the
group photo has two identities who are in it."""

import importlib.util
import sys
from pathlib import Path

from PIL import Image

# (x0, y0, x1, y1) of two faces of t1.jpg (1280 x 886), with room around each face for the detector
PEOPLE = {"person1.png": (855, 15, 1070, 265), "person2.png": (410, 220, 625, 470)}


def package_file(package: str, relative: str) -> Path:
    return Path(importlib.util.find_spec(package).submodule_search_locations[0]) / relative


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    Image.open(package_file("skimage", "data/astronaut.png")).convert("RGB").save(out / "face.png")
    group = Image.open(package_file("insightface", "data/images/t1.jpg")).convert("RGB")
    group.save(out / "group.png")
    for name, box in PEOPLE.items():
        group.crop(box).save(out / name)
    print(f"demo photos in {out}: face.png, group.png, {', '.join(PEOPLE)}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "out/demo"))
