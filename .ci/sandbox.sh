#!/usr/bin/env bash
# What the sandbox tests need on a fresh Debian machine, as root: bubblewrap, a running Docker
# engine, and the task image (a minimal Debian made by mmdebstrap from the Debian mirror, plus this
# machine's Python packages and agent CLIs: nothing is pulled from a registry).
# Idempotent: installed tools, a running engine and an image with the same content hash are reused.
#   bash .ci/sandbox.sh            then: python -m pytest tests/test_sandbox_*.py
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
say() { echo "[sandbox] $*" >&2; }
SUDO=""
[[ "$(id -u)" != 0 ]] && SUDO="sudo"

missing=()
command -v bwrap >/dev/null || missing+=(bubblewrap)
command -v dockerd >/dev/null || missing+=(docker.io)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if (( ${#missing[@]} )); then
  say "apt: ${missing[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

engine_up() { python3 -c "import docker; docker.from_env(timeout=5).ping()" >/dev/null 2>&1; }
if ! engine_up; then
  say "starting dockerd (log: /tmp/dockerd.log)"
  $SUDO sh -c 'nohup dockerd > /tmp/dockerd.log 2>&1 &'
  for _ in $(seq 60); do engine_up && break; sleep 1; done
  engine_up || { say "dockerd did not answer within 60 s:"; tail -n 30 /tmp/dockerd.log >&2; exit 1; }
fi

# Minutes the first time on a machine (mmdebstrap, then docker import; bench/RESULTS.md has the
# figures), seconds afterwards. The tests reuse this image.
say "task image"
python3 -m autoembed.sandbox.image --task embed
