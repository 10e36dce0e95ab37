#!/usr/bin/env bash
# Install what jaxfault needs: the offline Fashion-MNIST copy and the King James Version text
# (Debian), and the Python packages.
set -euo pipefail
cd "$(dirname "$0")"
PKGS=()
[ -d /usr/share/datasets/fashion-mnist ] || PKGS+=(dataset-fashion-mnist)
command -v bible >/dev/null 2>&1 || PKGS+=(bible-kjv)   # the default language model's corpus
if [ "${#PKGS[@]}" -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  ($SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${PKGS[@]}") \
    || echo "setup.sh: could not install ${PKGS[*]}; data will come from TFDS or --data-dir" >&2
fi
python3 -m pip install -q -r requirements.txt
# CPU JAX by default; for GPU/TPU see README ("Accelerators").
