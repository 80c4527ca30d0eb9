#!/usr/bin/env bash
# Set up DIT's development environment in ./.venv (idempotent).
#
#   bash scripts/setup.sh            # Python env only
#   bash scripts/setup.sh --browser  # also Debian chromium + chromium-driver for browser tests
#
# torch==2.13.0 is installed FIRST, on its own: on our machines pip resolves it to
# a local CPU wheel. Installing the project first would let pip satisfy `torch>=2.3`
# with a multi-GB CUDA build from PyPI.
set -euo pipefail

TORCH_VERSION="2.13.0"
WITH_BROWSER=0
for arg in "$@"; do
    case "$arg" in
        --browser) WITH_BROWSER=1 ;;
        -h|--help)
            sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
            exit 0 ;;
        *) echo "setup.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '[setup] %s\n' "$*"; }

# ---------------------------------------------------------------- Python venv
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
    if command -v python3.11 >/dev/null 2>&1; then PYTHON=python3.11; else PYTHON=python3; fi
fi
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else 1)'; then
    echo "setup.sh: need Python >= 3.11, got: $("$PYTHON" --version 2>&1)" >&2
    exit 1
fi

if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else 1)' 2>/dev/null; then
    log "reusing $VENV ($("$VENV/bin/python" --version 2>&1))"
else
    [[ -e "$VENV" ]] && { log "removing broken $VENV"; rm -rf "$VENV"; }
    log "creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -qq --upgrade pip
fi
PIP=("$VENV/bin/python" -m pip)

# ---------------------------------------------------------------- torch first
installed_torch="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)"
if [[ "${installed_torch%%+*}" == "$TORCH_VERSION" ]]; then
    log "torch $installed_torch already installed"
else
    log "installing torch==$TORCH_VERSION"
    "${PIP[@]}" install -qq "torch==$TORCH_VERSION"
fi

# ---------------------------------------------------------------- the project
log "installing dit (editable) with extras [dev,bench]"
"${PIP[@]}" install -qq -e ".[dev,bench]"

final_torch="$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
if [[ "${final_torch%%+*}" != "$TORCH_VERSION" ]]; then
    echo "setup.sh: expected torch $TORCH_VERSION, found $final_torch" >&2
    exit 1
fi
log "torch $final_torch"

# ---------------------------------------------------------------- browser
if [[ "$WITH_BROWSER" == 1 ]]; then
    if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
        log "chromium already installed ($(/usr/bin/chromium --version 2>/dev/null || echo '?'))"
    else
        SUDO=()
        if [[ "$(id -u)" != 0 ]]; then
            if command -v sudo >/dev/null 2>&1; then
                SUDO=(sudo)
            else
                echo "setup.sh: --browser needs root (or sudo) to apt-get install chromium" >&2
                exit 1
            fi
        fi
        log "installing Debian chromium + chromium-driver (apt-get)"
        export DEBIAN_FRONTEND=noninteractive
        "${SUDO[@]}" apt-get update -qq
        "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
        log "chromium installed ($(/usr/bin/chromium --version 2>/dev/null || echo '?'))"
    fi
fi

log "done. Dashboard: .venv/bin/streamlit run dashboard/app.py    Tests: .venv/bin/python -m pytest"
