#!/usr/bin/env bash
# Install the Debian 12 packages PIXL's local stack and tests need, only if missing.
# Safe to run repeatedly; needs root (or sudo) only when something is missing.
set -euo pipefail
# tesseract-ocr: reads burned-in text (pixl_core.dicom.pixels); fonts-*: the synthetic burned-in corpus;
# chromium + chromium-driver: the browser test of the operator's page (/pixl/ui/), headless;
# git: `pixl allowlist diff` reads revisions, and its tests build repositories;
# orthanc-dicomweb: the DICOMweb plugin of the stack's research platform (STOW-RS, QIDO-RS);
# orthanc-postgresql: orthanc-raw's and orthanc-anon's index in PIXL's Postgres (replicas share it).
packages=(orthanc orthanc-python orthanc-dicomweb orthanc-postgresql postgresql python3.11 python3.11-venv python3-pip vsftpd openssl dcmtk
  tesseract-ocr tesseract-ocr-eng libtesseract-dev libleptonica-dev fonts-dejavu-core fonts-liberation2
  chromium chromium-driver git)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing system packages: ${missing[*]}" >&2
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# Debian starts services on install; PIXL runs its own instances, so keep the system ones off
# while installing (only if no policy is in place already, and only for this install).
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod +x "$policy"
  trap '$SUDO rm -f "$policy"' EXIT
fi
$SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
