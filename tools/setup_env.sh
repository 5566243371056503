#!/usr/bin/env bash
# Set up (or update) the mmfca environment in .venv at the repository root.
#
#   bash tools/setup_env.sh
#
# Idempotent: a second run only checks what is there. The slow step is mmcv,
# which has no wheels for torch 2.14 and is built from its sdist with its
# CPU ops (about 20 minutes on 2 cores). The built wheel is kept in
# $MMFCA_WHEEL_CACHE (default ~/.cache/mmfca/wheels), outside the repository,
# so later set-ups reuse it in seconds.
#
# Environment variables:
#   MMFCA_STACK        which OpenMMLab packages: 'openmmlab' (default: mmengine
#                      0.10.7, mmcv 2.1.0, mmpretrain 1.2.0, mmsegmentation
#                      1.2.2, mmdet 3.3.0; requirements.txt) or 'onedl' (the
#                      maintained OneDL forks, same import names:
#                      requirements-onedl.txt)
#   PYTHON             interpreter for a new venv (default: python3.11, else python3)
#   MMFCA_VENV         the environment (default: <repo>/.venv, or <repo>/.venv-onedl
#                      for the onedl stack); an existing venv or conda prefix
#                      with Python 3.11 is used as it is
#   FORCE_CUDA=1       build mmcv's CUDA ops even where no GPU is visible
#   MMFCA_WHEEL_CACHE  where the built mmcv wheel is cached
#   MAX_JOBS           parallel compile jobs for mmcv (default: number of cores)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${MMFCA_WHEEL_CACHE:-$HOME/.cache/mmfca/wheels}"

step() { printf '\n==> %s\n' "$*"; }
die() { printf '\nERROR: %s\n' "$*" >&2; exit 1; }

STACK="${MMFCA_STACK:-openmmlab}"
case "$STACK" in
  # mmcv's distribution, version and sdist (the import name is mmcv in both).
  openmmlab) MMCV_DIST=mmcv; MMCV_VERSION=2.1.0; SDIST_STEM=mmcv-2.1.0
             REQUIREMENTS=requirements.txt; DEFAULT_VENV="$REPO/.venv" ;;
  onedl) MMCV_DIST=onedl-mmcv; MMCV_VERSION=2.3.6; SDIST_STEM=onedl_mmcv-2.3.6
         REQUIREMENTS=requirements-onedl.txt; DEFAULT_VENV="$REPO/.venv-onedl" ;;
  *) die "MMFCA_STACK='$STACK' is not a stack: use 'openmmlab' (the default) or 'onedl' (docs/get_started.md)." ;;
esac
VENV="${MMFCA_VENV:-$DEFAULT_VENV}"
trap 'die "set-up failed at line $LINENO (command: $BASH_COMMAND). Fix the cause above and run tools/setup_env.sh again; finished steps are skipped."' ERR

check_python() {
  local ver
  ver=$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
    || die "cannot run '$1'. Install Python 3.11 or set PYTHON=/path/to/python3.11."
  [ "$ver" = "3.11" ] || die "Python 3.11 is required (torch 2.14.1 and mmcv $MMCV_VERSION are pinned for it); '$1' is $ver. Set PYTHON=/path/to/python3.11, or MMFCA_VENV to a Python 3.11 environment."
}

step "environment: $VENV ($STACK stack)"
if [ -x "$VENV/bin/python" ]; then
  check_python "$VENV/bin/python"
  echo "exists, reusing"
else
  if [ -z "${PYTHON:-}" ]; then
    if command -v python3.11 >/dev/null; then PYTHON=python3.11; else PYTHON=python3; fi
  fi
  check_python "$PYTHON"
  "$PYTHON" -m venv "$VENV"
  echo "created a venv with $PYTHON"
fi
PY="$VENV/bin/python"
# pip, without the notes about index locations this machine's pip.conf names
# but does not have.
pip_install() {
  "$PY" -m pip --disable-pip-version-check install -q "$@" 2>&1 \
    | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
}

# Both stacks write the same import packages (mmcv/, mmengine/, ...), so an
# environment holds one of them: refuse to install over the other.
"$PY" - "$STACK" <<'EOF' || die "this environment ($VENV) holds the other stack's packages (named above). Use a new environment (MMFCA_VENV=/path/to/new/venv) or the stack it holds (MMFCA_STACK)."
import sys
from importlib.metadata import distributions
other = {
    'openmmlab': ['onedl-mmengine', 'onedl-mmcv', 'onedl-mmpretrain',
                  'onedl-mmsegmentation', 'onedl-mmdetection'],
    'onedl': ['mmengine', 'mmcv', 'mmcv-lite', 'mmpretrain', 'mmsegmentation',
              'mmdet'],
}[sys.argv[1]]
installed = {(d.metadata['Name'] or '').lower() for d in distributions()}
found = [name for name in other if name in installed]
if found:
    sys.exit(f'installed here: {", ".join(found)}')
EOF

step "build tools and torch (requirements-torch.txt)"
pip_install --upgrade pip
pip_install -r "$REPO/requirements-torch.txt"
"$PY" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)'

mmcv_ok() {
  "$PY" - <<EOF 2>/dev/null
import mmcv, mmcv.ops
from mmcv.ops import RoIAlign
assert mmcv.__version__ == "$MMCV_VERSION", mmcv.__version__
EOF
}

step "$MMCV_DIST $MMCV_VERSION with ops"
if mmcv_ok; then
  echo "already installed with ops"
else
  mkdir -p "$CACHE"
  # One cached wheel per torch version and kind of ops: mmcv compiles its
  # CUDA ops when a GPU is visible or FORCE_CUDA=1.
  build_tag=$("$PY" -c 'import os, torch
ops = "cuda" if torch.cuda.is_available() or os.getenv("FORCE_CUDA") == "1" else "cpu"
print(torch.__version__.split("+")[0] + "-" + ops)')
  wheel_dir="$CACHE/torch$build_tag"
  wheel_glob="$wheel_dir/${MMCV_DIST//-/_}-$MMCV_VERSION-*.whl"
  wheel=$(ls $wheel_glob 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ]; then
    echo "no cached wheel in $wheel_dir: building mmcv from its sdist."
    echo "This is the long step (about 20 minutes on 2 cores for CPU ops; longer with CUDA)."
    build=$(mktemp -d)
    # The sdist's setup.py imports torch, so fetch it without build isolation
    # (MMCV_WITH_OPS=1, or its metadata names it mmcv-lite).
    MMCV_WITH_OPS=1 "$PY" -m pip download -q --no-deps --no-binary "$MMCV_DIST" \
      --no-build-isolation -d "$build" "$MMCV_DIST==$MMCV_VERSION" 2>&1 \
      | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
    tar -xzf "$build/$SDIST_STEM.tar.gz" -C "$build"
    src="$build/$SDIST_STEM"
    # torch 2.14 headers need C++20; mmcv's setup.py (onedl-mmcv's too)
    # hard-codes c++14/17.
    sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "$src/setup.py"
    grep -q -- '-std=c++20' "$src/setup.py" || die "could not switch mmcv's setup.py to -std=c++20"
    jobs="${MAX_JOBS:-$(nproc)}"
    echo "compiling with $jobs jobs; progress below (one line per compiled file)"
    (cd "$src" && MMCV_WITH_OPS=1 MAX_JOBS="$jobs" "$PY" setup.py bdist_wheel -d "$wheel_dir" 2>&1 \
      | grep --line-buffered -E '^\[[0-9]+/[0-9]+\]|error:' \
      | sed -u -E 's#^(\[[0-9]+/[0-9]+\]) .* -c (\S+) -o .*#\1 \2#' ) \
      || die "mmcv build failed; see the compiler errors above"
    wheel=$(ls $wheel_glob | head -n1)
    rm -rf "$build"
    echo "cached $wheel"
  else
    echo "using cached wheel $wheel"
  fi
  # Its dependencies (mmengine among them) come with $REQUIREMENTS.
  pip_install --no-deps --force-reinstall "$wheel"
  echo "installed $wheel"
fi

step "OpenMMLab codebases and the rest ($REQUIREMENTS)"
pip_install -r "$REPO/$REQUIREMENTS"

step "mmfca (editable)"
pip_install --no-deps --no-build-isolation -e "$REPO"

step "check"
mmcv_ok || die "mmcv $MMCV_VERSION is installed without its compiled ops. Delete the cached wheel in $CACHE and run tools/setup_env.sh again to rebuild it."
"$PY" - <<'EOF'
import mmcv, mmdet, mmseg, mmpretrain, mmengine, timm, torch
import mmcv.ops
import mmfca
print(f"torch {torch.__version__} | mmengine {mmengine.__version__} | mmcv {mmcv.__version__} (ops) | "
      f"mmpretrain {mmpretrain.__version__} | mmseg {mmseg.__version__} | mmdet {mmdet.__version__} | "
      f"timm {timm.__version__} | mmfca {mmfca.__version__}")
EOF
printf '\nReady. Activate with: source %s/bin/activate\n' "$VENV"
