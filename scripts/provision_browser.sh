#!/bin/sh
# Headless Chromium for the browser tests (tests/test_browser.py) and the report screenshots:
# installs Debian's `chromium` and `chromium-driver` with apt when either is missing.
# Safe to run again; needs root (or sudo) only when something is missing.
set -eu

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    echo "chromium and chromedriver present: $(chromium --version 2>/dev/null || echo '?')"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "provision_browser: no apt-get here; install Chromium and its chromedriver yourself" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver fonts-dejavu-core
echo "installed: $(chromium --version)"
