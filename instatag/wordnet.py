"""WordNet for NLTK, offline.

NLTK reads WordNet from ``<nltk_data>/corpora/wordnet``. Debian's ``wordnet-base`` and
``wordnet-sense-index`` hold the database files under ``/usr/share/wordnet``; NLTK also
needs the ``lexnames`` file (lexnames(5WN)) that Debian lacks, shipped here as
``instatag/data/wordnet_lexnames``. ``provision`` assembles the corpus; ``require`` is what
the vocabulary calls before lemmatizing, failing with instructions when WordNet is missing.
Nothing is ever downloaded at run time.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from .errors import UserError

DEBIAN_DIR = Path("/usr/share/wordnet")
LEXNAMES = Path(__file__).resolve().parent / "data" / "wordnet_lexnames"
FILES = [f"{kind}.{pos}" for kind in ("data", "index") for pos in ("noun", "verb", "adj", "adv")]
FILES += [f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv")]
OPTIONAL = ["index.sense", "cntlist.rev"]

HOW_TO_INSTALL = (
    "WordNet for NLTK is not installed. Offline: `apt-get install wordnet-base wordnet-sense-index` "
    "and then `python -m instatag.wordnet provision` (make setup does both); with internet access: "
    "`python -m nltk.downloader -d <a folder on NLTK's data path> wordnet`. "
    "NLTK looks in: {paths}"
)


def default_target() -> Path:
    """``<venv>/share/nltk_data``: on NLTK's data path without any environment variable."""
    return Path(sys.prefix) / "share" / "nltk_data"


def provision(target: Path | None = None, source: Path = DEBIAN_DIR) -> Path:
    """Assemble ``target/corpora/wordnet`` from Debian's files plus ``lexnames``."""
    target = target or default_target()
    missing = [f for f in FILES if not (source / f).is_file()]
    if missing:
        raise UserError(
            f"{source} lacks {', '.join(missing)}: install Debian's wordnet-base and wordnet-sense-index"
        )
    dest = target / "corpora" / "wordnet"
    tmp = dest.with_name("wordnet.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in FILES + [f for f in OPTIONAL if (source / f).is_file()]:
        shutil.copyfile(source / name, tmp / name)
    shutil.copyfile(LEXNAMES, tmp / "lexnames")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def require():
    """NLTK's WordNet reader, or a UserError saying how to install WordNet.

    The reader is NLTK's own ``nltk.corpus.wordnet``, loaded here, so that
    ``nltk.stem.WordNetLemmatizer`` uses the very same corpus (loaded once per process).
    """
    import nltk

    try:
        root = nltk.data.find("corpora/wordnet")
    except LookupError:
        try:
            root = nltk.data.find("corpora/wordnet.zip/wordnet/")
        except LookupError:
            raise UserError(HOW_TO_INSTALL.format(paths=", ".join(nltk.data.path))) from None
    try:
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
        return wordnet
    except (OSError, LookupError, ValueError, AssertionError) as exc:
        raise UserError(f"WordNet at {root} is incomplete ({exc}). " + HOW_TO_INSTALL.format(
            paths=", ".join(nltk.data.path))) from None


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m instatag.wordnet", description=__doc__)
    parser.add_argument("command", choices=["provision", "check"])
    parser.add_argument("--target", type=Path, help="nltk_data folder (default: <venv>/share/nltk_data)")
    parser.add_argument("--source", type=Path, default=DEBIAN_DIR, help="Debian's WordNet files")
    args = parser.parse_args()
    try:
        if args.command == "provision":
            print(f"WordNet provisioned at {provision(args.target, args.source)}")
        wn = require()
        print(f"WordNet {wn.get_version()} found; 'cakes' -> {wn.morphy('cakes', 'n')}")
    except UserError as exc:
        sys.exit(f"error: {exc}")
