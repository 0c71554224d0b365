#!/usr/bin/env python3
"""Which units a second cargo build compiles that a first one did not.

usage: unit-diff.py FIRST.json SECOND.json

Both files are `cargo +nightly ... --unit-graph -Z unstable-options` output
(see README.md). A unit is identified the way cargo reuses it: package,
target, mode, features, profile and, recursively, its dependencies. Prints the
registry units of SECOND that FIRST does not have (compiled again or new) and
the feature differences of registry packages both builds use.
"""

import json
import sys


def load(path):
    units = json.load(open(path))["units"]
    memo = {}

    def key(i):
        if i not in memo:
            u = units[i]
            profile = dict(u["profile"])
            profile.pop("name", None)  # `test` inherits `dev`: same artifacts
            memo[i] = hash((
                u["pkg_id"], u["target"]["name"], tuple(u["target"]["kind"]), u["mode"],
                tuple(sorted(u["features"])), json.dumps(profile, sort_keys=True),
                tuple(sorted(key(d["index"]) for d in u["dependencies"])),
            ))
        return memo[i]

    return {key(i): units[i] for i in range(len(units))}


def registry(u):
    return "registry" in u["pkg_id"]


def name(u):
    return u["pkg_id"].split("#")[-1]


def features(units):
    out = {}
    for u in units.values():
        if registry(u) and u["mode"] == "build":
            out.setdefault(name(u), set()).update(u["features"])
    return out


def main():
    first, second = load(sys.argv[1]), load(sys.argv[2])
    new = [u for k, u in second.items() if k not in first]
    ext = sorted({(name(u), u["mode"], u["target"]["name"]) for u in new if registry(u)})
    print(f"units in {sys.argv[2]}: {len(second)}, not in {sys.argv[1]}: {len(new)}, "
          f"of them from the registry: {len(ext)}")
    for e in ext:
        print("  ", *e)
    fa, fb = features(first), features(second)
    print("feature differences of registry packages both build:")
    for p in sorted(fa.keys() & fb.keys()):
        if fa[p] != fb[p]:
            print("  ", p, "only 2nd:", sorted(fb[p] - fa[p]), "only 1st:", sorted(fa[p] - fb[p]))


if __name__ == "__main__":
    main()
