#!/usr/bin/env bash
# Makes sure Fashion-MNIST is available: $SIMCLRV2_DATA, the Debian location, or the Debian package
# dataset-fashion-mnist installed with apt when we may. Prints where the data is, or how to get it.
set -euo pipefail
DEBIAN_DIR=/usr/share/datasets/fashion-mnist
has_files() { [ -f "$1/train-images-idx3-ubyte.gz" ] || [ -f "$1/train-images-idx3-ubyte" ]; }
for d in "${SIMCLRV2_DATA:-}/fashion-mnist" "${SIMCLRV2_DATA:-}" "$DEBIAN_DIR"; do
  if [ -n "$d" ] && has_files "$d"; then echo "Fashion-MNIST: $d"; exit 0; fi
done
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing the Debian package dataset-fashion-mnist"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
  has_files "$DEBIAN_DIR" && { echo "Fashion-MNIST: $DEBIAN_DIR"; exit 0; }
fi
echo "Fashion-MNIST not found. Install the Debian package dataset-fashion-mnist, or put the four IDX files" >&2
echo "(train/t10k images and labels) in a folder and set SIMCLRV2_DATA to it, or run: simclrv2 download fashion-mnist" >&2
exit 1
