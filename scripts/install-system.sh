#!/usr/bin/env bash
# Debian packages voxloop needs: espeak-ng (phonemes for Piper and the es/fr/pt/ko voices);
# for the tests also human speech recordings (pocketsphinx-testdata), sox, a real browser and npm.
set -euo pipefail
packages=(espeak-ng libespeak-ng1)
[[ "${1:-}" == "--test" ]] && packages+=(pocketsphinx-testdata alsa-utils sox chromium)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
# The browser tests fetch socket.io-client with npm; any Node.js that brings npm will do.
[[ "${1:-}" == "--test" ]] && ! command -v npm >/dev/null && missing+=(nodejs npm)
[[ ${#missing[@]} -eq 0 ]] && exit 0
echo "installing Debian packages: ${missing[*]}"
sudo=""
[[ $(id -u) -ne 0 ]] && sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
