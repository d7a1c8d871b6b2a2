#!/bin/sh
# Builds the test guest (guest/testguest) into guest/build/testguest.elf and prints that path.
# Incremental (make): rerunning with nothing changed does no work.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
make -s -C "$here/testguest" O="$here/build" >&2
echo "$here/build/testguest.elf"
