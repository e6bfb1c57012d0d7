#!/bin/sh
# Debian packages the tests and tools use: a browser for the page test, espeak-ng to
# make test speech, redis-server for the shared-state tests, coturn and caddy for the
# TURN-credential and TLS-proxy tests (the same servers infra/compose.yaml runs), sipp
# (sip-tester) and baresip as real SIP peers for the SIP tests, real recorded speech for the
# turn-taking tests and bench (asterisk-core-sounds-en-wav: Allison Smith's prompts,
# CC-BY-SA-3.0, and their transcripts in asterisk-core-sounds-en). Installs only what is missing;
# without root it says what to install instead.
set -e
missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v espeak-ng >/dev/null 2>&1 || missing="$missing espeak-ng"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v turnserver >/dev/null 2>&1 || missing="$missing coturn"
command -v caddy >/dev/null 2>&1 || missing="$missing caddy"
command -v sipp >/dev/null 2>&1 || missing="$missing sip-tester"
command -v baresip >/dev/null 2>&1 || missing="$missing baresip"
[ -f /usr/share/asterisk/sounds/en_US_f_Allison/tt-weasels.wav ] || missing="$missing asterisk-core-sounds-en-wav"
# the prompts' transcripts (the labels of the turn-taking set) come in a separate package
[ -f /usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz ] || missing="$missing asterisk-core-sounds-en"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing Debian packages:$missing"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null
else
    echo "note: some tests need these Debian packages:$missing (sudo apt-get install$missing)" >&2
fi
