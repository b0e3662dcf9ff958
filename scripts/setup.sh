#!/usr/bin/env bash
# One-time set-up on a fresh machine: Debian packages (when root), the project's venv at .venv/, the package itself.
# Idempotent and fast when nothing changed: a stamp records the hash of pyproject.toml and this script.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(fluidsynth fluid-soundfont-gm fonts-noto-color-emoji chromium slurmctld slurmd slurm-client munge)
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: WARNING not root; missing Debian packages ${missing[*]} (the synthetic data falls back to numpy mode," \
         "SLURM and report-rendering tests will fail). Install them with: sudo apt-get install ${missing[*]}" >&2
  fi
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp=.venv/.installed-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  echo "setup: installing Python dependencies into .venv (first time: ~2 minutes)"
  # The filter drops two harmless pip warnings; pip's own exit status (PIPESTATUS[0]) decides, not grep's (which is
  # 1 when every line was filtered).
  set +e
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -vE "^WARNING: Location|is ignored"
  pip_rc=${PIPESTATUS[0]}
  set -e
  if [ "$pip_rc" -ne 0 ]; then
    echo "setup: pip install -e '.[test]' failed (exit $pip_rc), see its messages above; fix that and run again" >&2
    exit "$pip_rc"
  fi
  .venv/bin/python -c "import torch, torchvision, torchaudio, ray, deepspeed, faiss, webdataset, submitit, av" \
    || { echo "setup: the venv is broken; remove .venv and run again" >&2; exit 1; }
  rm -f .venv/.installed-*
  touch "$stamp"
fi
