#!/usr/bin/env python3
"""THIRD-PARTY.txt for a release: every crate the named packages link (normal
dependencies, transitively, for the platform `cargo metadata --filter-platform` was
given), with its version, licence and repository. Reads cargo metadata on stdin.

    cargo metadata --format-version 1 --filter-platform TARGET | scripts/third_party.py PKG...
"""
import json
import sys

meta = json.load(sys.stdin)
pkgs = {p["id"]: p for p in meta["packages"]}
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
roots = [p["id"] for p in meta["packages"] if p["name"] in sys.argv[1:]]
if len(roots) != len(sys.argv[1:]):
    sys.exit(f"third_party.py: not all of {sys.argv[1:]} are workspace packages")
seen, todo = set(), list(roots)
while todo:
    i = todo.pop()
    if i in seen:
        continue
    seen.add(i)
    for d in nodes[i]["deps"]:
        if any(k["kind"] in (None, "normal") for k in d["dep_kinds"]):
            todo.append(d["pkg"])
workspace = set(meta["workspace_members"])
rows = sorted((pkgs[i]["name"], pkgs[i]["version"], pkgs[i].get("license") or "see its repository",
               pkgs[i].get("repository") or "") for i in seen if i not in workspace)
print("Crates linked into sen, sen-export and sen-calibrate (name, version, licence, repository).")
print("Each crate's licence text is in its source package on crates.io.\n")
for name, ver, lic, repo in rows:
    print(f"{name} {ver}\t{lic}\t{repo}")
