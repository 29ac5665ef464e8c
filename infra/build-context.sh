#!/bin/sh
# The image's build context: the working tree as git sees it (tracked + untracked, not ignored), the tiny weights
# (baked for the demo and the local stack) and the torch CPU wheel pip takes from this machine's disk.
# usage: infra/build-context.sh <dir>
set -eu
out=${1:?usage: build-context.sh DIR}
root=$(git rev-parse --show-toplevel)
cd "$root"
rm -rf "$out"
mkdir -p "$out/wheels" "$out/weights"
git ls-files -z --cached --others --exclude-standard | xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' _ \
    | tar --null -cf - -T - | tar -xf - -C "$out"
cp -r weights/tiny "$out/weights/tiny"
# the wheel `pip install torch==2.13.0` resolves to here (find-links / a local index): a CPU build
wheel=$(.venv-deploy/bin/pip download --no-deps --only-binary=:all: -d "$out/wheels" torch==2.13.0 2>/dev/null \
        | sed -n 's/^Saved \(.*\)$/\1/p; s/^File was already downloaded \(.*\)$/\1/p' | head -n1)
ls "$out"/wheels/torch-2.13.0*.whl >/dev/null
case "$(ls "$out"/wheels/torch-*.whl)" in
    *+cpu*) ;;
    *) echo "build-context: pip resolved a non-CPU torch wheel here ($wheel); the image wants the CPU build" >&2; exit 1 ;;
esac
