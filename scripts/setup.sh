#!/usr/bin/env bash
# Creates .venv from scratch with torch==2.13.0 installed first (a plain `torch` requirement would
# pull a multi-GB CUDA build), then the project with its extras. Also installs the system
# libraries that offscreen MuJoCo rendering needs, when they are missing and we may install them.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

need_gl=0
ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1' || need_gl=1
[ -e /usr/lib/x86_64-linux-gnu/dri ] || [ -e /usr/lib/aarch64-linux-gnu/dri ] || need_gl=1
if [ "$need_gl" = 1 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing EGL/Mesa libraries for offscreen rendering"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libegl1 libgl1 libgl1-mesa-dri libosmesa6 >/dev/null
  else
    echo "[setup] warning: libEGL/Mesa not found; install libegl1 libgl1-mesa-dri for simulation rendering" >&2
  fi
fi

# Headless Chromium checks that the offline HTML reports render (tests/viz); optional elsewhere.
if ! command -v chromium >/dev/null 2>&1 && [ "${XWAM_SKIP_CHROMIUM:-0}" != 1 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing chromium (headless report checks)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "[setup] warning: could not install chromium; the report rendering test will be skipped" >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
# pip, minus the harmless notes about this machine's optional local package indexes; fails when pip fails
quiet_pip() {
  set +e
  $PIP "$@" 2>&1 | grep -v "is ignored: it is neither a file nor a directory"
  local status=${PIPESTATUS[0]}
  set -e
  [ "$status" = 0 ] || { echo "[setup] pip $* failed (exit $status)" >&2; exit "$status"; }
}
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  echo "[setup] installing torch==2.13.0 (CPU)"
  quiet_pip install -q torch==2.13.0
fi
echo "[setup] installing xwam with extras"
quiet_pip install -q -e ".[all]"
"$VENV/bin/python" -c "import torch, diffusers, xwam; assert torch.__version__.startswith('2.13.0'), torch.__version__; print('[setup] ok: torch', torch.__version__, 'diffusers', diffusers.__version__)"
# openpi's own client (tests/serve/test_openpi_interop.py) in a small separate environment: it pins
# numpy<2 and imports typing_extensions without declaring it, so it must not shape the project's.
OPENPI_VENV=${OPENPI_VENV:-.venv-openpi}
if [ ! -e "$OPENPI_VENV/.installed" ] && [ "${XWAM_SKIP_OPENPI:-0}" != 1 ]; then
  echo "[setup] creating $OPENPI_VENV (openpi-client 0.1.2, for the interop test)"
  "$PYTHON" -m venv "$OPENPI_VENV"
  if "$OPENPI_VENV/bin/python" -m pip install -q openpi-client==0.1.2 typing_extensions 2>&1 \
      | grep -v "is ignored: it is neither a file nor a directory"; [ "${PIPESTATUS[0]}" = 0 ]; then
    touch "$OPENPI_VENV/.installed"
  else
    echo "[setup] warning: could not install openpi-client; its interop test will be skipped" >&2
  fi
fi
touch "$VENV/.xwam-installed"
