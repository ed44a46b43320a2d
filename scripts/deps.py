#!/usr/bin/env python3
"""The dependencies between a crate's modules, and its circles.

usage: scripts/deps.py [CRATE_SRC_DIR] [--depth N]

Each `.rs` file under the directory belongs to a module path (`sync/streams.rs` is
`sync::streams`); at depth N (default 1) modules are grouped by their first N segments. A
file depends on the modules it names through `crate::...` paths (in `use` lines or inline)
(`super::` and `self::` paths stay inside a module and are not counted; comments are
skipped). Test modules count like the rest.
Prints every edge, then each circle (a strongly connected set of more than one module);
exits 1 when there is a circle.
"""
import os
import re
import sys


def module_of(root, path, depth):
    rel = os.path.relpath(path, root)[:-3]
    parts = rel.split(os.sep)
    if parts[-1] in ("lib", "main", "mod"):
        parts = parts[:-1]
    return "::".join(parts[:depth]) if parts else "crate"


def main():
    args = sys.argv[1:]
    depth = 1
    if "--depth" in args:
        i = args.index("--depth")
        depth = int(args[i + 1])
        del args[i : i + 2]
    root = args[0] if args else "controller/src"
    edges = {}
    for d, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(d, f)
            me = module_of(root, path, depth)
            # Comments (doc links included) are not dependencies.
            text = re.sub(r"//[^\n]*", "", open(path, encoding="utf-8").read())
            # `use crate::{a, b::c}` and `crate::a::...`
            names = set(re.findall(r"crate::([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)", text))
            for group in re.findall(r"crate::\{([^}]*)\}", text):
                names.update(n.strip() for n in group.split(","))
            for n in names:
                target = "::".join(n.split("::")[:depth])
                top = target.split("::")[0]
                known = os.path.exists(os.path.join(root, top + ".rs")) or os.path.isdir(
                    os.path.join(root, top)
                )
                inside = target == me or me.startswith(target + "::")
                if known and not inside and me != "crate":
                    edges.setdefault(me, set()).add(target)
    for a in sorted(edges):
        print(f"{a} -> {', '.join(sorted(edges[a]))}")
    # Tarjan's strongly connected components.
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            comps.append(comp)

    sys.setrecursionlimit(10000)
    for v in list(edges):
        if v not in index:
            visit(v)
    circles = [sorted(c) for c in comps if len(c) > 1]
    for c in circles:
        print("circle:", " <-> ".join(c))
    if not circles:
        print("no circles")
    sys.exit(1 if circles else 0)


if __name__ == "__main__":
    main()
