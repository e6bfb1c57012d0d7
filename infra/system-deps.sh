#!/bin/sh
# Debian packages the tests and tools use: a browser for the page test, espeak-ng/sox to
# make test speech, redis-server for the shared-state tests. Installs only what is missing;
# without root it says what to install instead.
set -e
missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v espeak-ng >/dev/null 2>&1 || missing="$missing espeak-ng"
command -v sox >/dev/null 2>&1 || missing="$missing sox"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing Debian packages:$missing"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null
else
    echo "note: some tests need these Debian packages:$missing (sudo apt-get install$missing)" >&2
fi
