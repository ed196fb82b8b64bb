#!/usr/bin/env bash
# Creates the example with a PyPI dependency as a git repository at
# examples/work/deps (kept out of the project's own history). Safe to run
# again: it recreates it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$here/work/deps"
rm -rf "$repo"
mkdir -p "$repo"
cp -R "$here/deps/." "$repo/"
cd "$repo"
git init -q -b main
git add -A
GIT_AUTHOR_DATE="2025-01-01T00:00:00Z" GIT_COMMITTER_DATE="2025-01-01T00:00:00Z" \
  git -c user.name=genesis-example -c user.email=example@localhost commit -q -m "deps: initial version"
echo "example repo ready: $repo ($(git rev-parse --short HEAD))"
