#!/usr/bin/env bash
# Install what jaxfault needs: the offline Fashion-MNIST copy (Debian) and the Python packages.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  ($SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist) \
    || echo "setup.sh: could not install dataset-fashion-mnist; data will come from TFDS or --data-dir" >&2
fi
python3 -m pip install -q -r requirements.txt
