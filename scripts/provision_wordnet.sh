#!/bin/sh
# WordNet for NLTK, offline: Debian's database files (scripts/provision_system.sh installs them)
# plus the lexnames file we ship, assembled under <venv>/share/nltk_data.
set -eu
VENV=${VENV:-.venv}
"$VENV/bin/python" -m instatag.wordnet provision
