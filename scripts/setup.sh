#!/usr/bin/env bash
# Set up this machine for autoembed (Debian/Ubuntu, Python >= 3.11, as root or with sudo).
#   bash scripts/setup.sh          what a trial needs: bubblewrap, PyTorch, the package and the base model
#   bash scripts/setup.sh --test   also what the tests need: a Docker engine and its task image (a minimal Debian
#                                  made by mmdebstrap from the Debian mirror), and the
#                                  claude, codex and gemini CLIs (run against a fake server by the tests)
set -euo pipefail
cd "$(dirname "$0")/.."
WANT_TEST=0
[[ "${1:-}" == "--test" ]] && WANT_TEST=1
SUDO=""
[[ "$(id -u)" != 0 ]] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
say() { echo "[setup] $*" >&2; }

apt_pkgs=(bubblewrap)
# iproute2: the escape test's second network namespace; mmdebstrap: the task image's Debian root filesystem;
# slurm-wlm, munge: the single-host Slurm of the placement tests
[[ $WANT_TEST == 1 ]] && apt_pkgs+=(docker.io iproute2 mmdebstrap slurm-wlm munge)
missing=()
for pkg in "${apt_pkgs[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
if (( ${#missing[@]} )); then
  say "apt: ${missing[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# A plain `pip install torch` pulls several GB of CUDA packages; on a CPU machine take the CPU build first.
# On a GPU machine install your CUDA build of torch before running this script: it is then left alone.
if ! python3 -c "import torch" 2>/dev/null; then
  say "torch (CPU build)"
  python3 -m pip install -q torch==2.13.0 || python3 -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
say "autoembed and its dependencies"
python3 -m pip install -q -e ".[test]"

if [[ $WANT_TEST == 1 ]]; then
  if command -v npm >/dev/null; then
    for cli in claude:@anthropic-ai/claude-code codex:@openai/codex gemini:@google/gemini-cli; do
      command -v "${cli%%:*}" >/dev/null || { say "npm: ${cli#*:}"; npm install -g --silent "${cli#*:}" >/dev/null 2>&1 || say "could not install ${cli#*:}"; }
    done
  else
    say "npm is missing: the CLI agent tests will be skipped"
  fi
  bash .ci/sandbox.sh
fi
say "done"
