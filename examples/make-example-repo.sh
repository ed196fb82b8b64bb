#!/usr/bin/env bash
# Creates the bundled example as a git repository at examples/work/calc
# (kept out of the project's own history). Safe to run again: it recreates it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$here/work/calc"
rm -rf "$repo"
mkdir -p "$repo"
cp -R "$here/calc/." "$repo/"
cd "$repo"
git init -q -b main
git add -A
GIT_AUTHOR_DATE="2025-01-01T00:00:00Z" GIT_COMMITTER_DATE="2025-01-01T00:00:00Z" \
  git -c user.name=genesis-example -c user.email=example@localhost commit -q -m "calc: initial version"
echo "example repo ready: $repo ($(git rev-parse --short HEAD))"
