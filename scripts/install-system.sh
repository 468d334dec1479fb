#!/usr/bin/env bash
# Debian packages voxloop needs: espeak-ng (phonemes for Piper and the es/fr/pt/ko voices);
# for the tests also human speech recordings (pocketsphinx-testdata), sox, a real browser, npm, and
# the infrastructure a cluster of nodes runs on (Redis, PostgreSQL, HAProxy), started on loopback.
set -euo pipefail
packages=(espeak-ng libespeak-ng1)
[[ "${1:-}" == "--test" ]] && packages+=(pocketsphinx-testdata alsa-utils sox chromium redis-server postgresql haproxy)
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
