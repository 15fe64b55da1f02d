#!/usr/bin/env bash
# Installs the peers that bench/run.py compares ser2tcp with.  Idempotent:
# what is already there is left alone, so a second run does nothing.
#
#   socat, ser2net    Debian packages (apt-get)
#   ser2tcp 2.3.0     the original, from PyPI, in its own virtualenv
#                     bench/.peers/ser2tcp-2.3.0 (python3 -m venv)
#
# ser2tcp itself is not installed here: run.py uses the `ser2tcp` console
# script next to the Python that runs it (pip install -e . in your venv).
# The benchmark itself needs nothing beyond Python's standard library.
set -euo pipefail
cd "$(dirname "$0")"

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

need=()
command -v socat >/dev/null 2>&1 || need+=(socat)
command -v ser2net >/dev/null 2>&1 || need+=(ser2net)
# python3 -m venv needs ensurepip, which Debian ships in python3-venv.
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

venv=.peers/ser2tcp-2.3.0
if ! "$venv/bin/ser2tcp" -V 2>/dev/null | grep -q '^ser2tcp 2\.3\.0'; then
    echo "setup: installing ser2tcp 2.3.0 into bench/$venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check ser2tcp==2.3.0
fi

echo "setup: socat: $(socat -V 2>/dev/null | grep -m1 'socat version' || echo missing)"
echo "setup: ser2net: $(ser2net -v 2>&1 | head -n 1)"
echo "setup: original: $("$venv/bin/ser2tcp" -V 2>&1)"
