#!/usr/bin/env bash
# Creates a bundled example as a git repository under examples/work (kept out
# of the project's own history), with a fixed date so its commit is the same
# everywhere. Safe to run again: it recreates it.
#   examples/make-example-repo.sh [calc|deps]   (default: calc)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
name="${1:-calc}"
[ -d "$here/$name" ] || { echo "no example named $name under $here" >&2; exit 2; }
repo="$here/work/$name"
rm -rf "$repo"
mkdir -p "$repo"
cp -R "$here/$name/." "$repo/"
cd "$repo"
git init -q -b main
git add -A
GIT_AUTHOR_DATE="2025-01-01T00:00:00Z" GIT_COMMITTER_DATE="2025-01-01T00:00:00Z" \
  git -c user.name=genesis-example -c user.email=example@localhost commit -q -m "$name: initial version"
echo "example repo ready: $repo ($(git rev-parse --short HEAD))"
