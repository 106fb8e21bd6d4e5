#!/usr/bin/env bash
# Headless Chromium and ChromeDriver (Debian packages) for the report's browser test.
# Installs only when they are missing and this is root on a machine with apt-get;
# otherwise says why, and the browser test skips with that reason.
set -uo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install-browser: chromium/chromedriver missing and not root with apt-get; the browser test will skip" >&2
    exit 0
fi
echo "install-browser: apt-get install chromium chromium-driver" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null \
    || echo "install-browser: apt-get failed; the browser test will skip" >&2
