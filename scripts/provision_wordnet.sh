#!/bin/sh
# Provision WordNet for NLTK offline: Debian's database files + the lexnames file we ship.
set -eu
VENV=${VENV:-.venv}
if [ ! -f /usr/share/wordnet/data.noun ] || [ ! -f /usr/share/wordnet/index.sense ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's wordnet-base and wordnet-sense-index"
    apt-get install -y -qq wordnet-base wordnet-sense-index >/dev/null 2>&1 || {
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base wordnet-sense-index; }
  else
    echo "error: WordNet is missing; run: sudo apt-get install wordnet-base wordnet-sense-index" >&2
    exit 1
  fi
fi
"$VENV/bin/python" -m instatag.wordnet provision
