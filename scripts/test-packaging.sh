#!/usr/bin/env bash
# Packaging tests: the Helm chart (lint, values schema, render), deploy/ (kustomize) and examples.
#   bash scripts/test-packaging.sh [pytest args...]
# Creates (or reuses) a virtualenv in target/py and installs tests/chart/requirements.txt.
# Falls back to `pip install --user` when python3-venv is missing (or installs it with apt as root).
# Exits non-zero when a test fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
REQ="tests/chart/requirements.txt"
VENV="${EAC_PY_VENV:-$ROOT/target/py}"
PY_SYS="${PYTHON:-python3}"

log() { printf '[test-packaging] %s\n' "$*" >&2; }

command -v "$PY_SYS" >/dev/null || { log "python3 is required"; exit 1; }

venv_ok() { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; }

make_venv() {
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PY_SYS" -m venv "$VENV" >/dev/null 2>&1 && venv_ok
}

PY=""
if venv_ok || make_venv; then
  PY="$VENV/bin/python"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  ver="$("$PY_SYS" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
  log "python3 -m venv does not work: installing python3-venv with apt"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && { apt-get install -y -qq "python${ver}-venv" || apt-get install -y -qq python3-venv; }; } >/dev/null \
    || log "apt could not install python3-venv"
  if make_venv; then PY="$VENV/bin/python"; fi
fi

if [ -n "$PY" ]; then
  stamp="$VENV/.requirements.sha256"
  want="$(sha256sum "$REQ" | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    log "installing $REQ into $VENV"
    "$PY" -m pip install --disable-pip-version-check -q -r "$REQ"
    echo "$want" >"$stamp"
  fi
else
  log "no virtualenv available: installing $REQ with pip --user"
  PY="$PY_SYS"
  # Debian's externally-managed Python needs --break-system-packages for --user installs.
  "$PY" -m pip install --disable-pip-version-check -q --user --no-warn-script-location -r "$REQ" \
    || "$PY" -m pip install --disable-pip-version-check -q --user --no-warn-script-location --break-system-packages -r "$REQ"
fi

if ! command -v kubectl >/dev/null; then
  log "kubectl not found: the kustomize tests (deploy/) will be skipped"
fi

# Keep the source tree clean: no .pytest_cache, no __pycache__.
export PYTHONDONTWRITEBYTECODE=1
exec "$PY" -m pytest -p no:cacheprovider tests/chart "$@"
