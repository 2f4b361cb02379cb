#!/bin/sh
# Debian packages the project needs beside Python: WordNet's database (for NLTK, offline),
# Chromium + ChromeDriver (the browser test of the Airflow UI plugin) and docker-compose
# (validates docker-compose.yml without an engine). Installs only what is missing; needs root
# (or sudo) and apt. Elsewhere it prints the command to run and exits non-zero.
set -eu
missing=""
[ -f /usr/share/wordnet/data.noun ] || missing="$missing wordnet-base"
[ -f /usr/share/wordnet/index.sense ] || missing="$missing wordnet-sense-index"
[ -x /usr/bin/chromium ] || missing="$missing chromium"
[ -x /usr/bin/chromedriver ] || missing="$missing chromium-driver"
command -v docker-compose >/dev/null 2>&1 || missing="$missing docker-compose"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  # shellcheck disable=SC2086
  apt-get install -y -qq $missing >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq $missing; }
else
  echo "error: missing Debian packages:$missing; run: sudo apt-get install$missing" >&2
  exit 1
fi
