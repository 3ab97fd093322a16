#!/usr/bin/env python3
"""Structure checks CI runs: no module circles, no oversized files.

Module circles: in every crate, two sibling modules (children of the same
parent) must not reach each other, directly or round a longer loop. A
module's references are the `crate::`, `super::` and `self::` paths in its
code (use lines, braces expanded, and inline paths; comments skipped). A
reference to an ancestor or a descendant is no edge (a child's
`use super::*`, a parent's `mod` items).

File size: no source file outside tests (`tests/`, `*/tests.rs`, benches)
over MAX_LINES lines.

Usage: .ci/structure.py [repo root]; exits 1 and prints what it found.
"""

import os
import re
import sys
from collections import defaultdict

MAX_LINES = 600

CRATES = ["core", "edge", "keypool", "origin", "autoscaler", "bench/load", "."]


def module_files(crate):
    """(module path tuple, file path) of every .rs file under crate/src."""
    src = os.path.join(crate, "src")
    out = []
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(root, f), src)
            parts = rel[:-3].split(os.sep)
            if parts[-1] in ("lib", "main", "mod"):
                parts = parts[:-1]
            out.append((tuple(parts), os.path.join(root, f)))
    return out


def code_of(path):
    """The file's code with comments and string literals blanked."""
    text = open(path, encoding="utf-8").read()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return "\n".join(line.split("//", 1)[0] for line in text.split("\n"))


def expand_use(tree):
    """Paths of a use tree: `a::{b, c::{d, e}}` -> a::b, a::c::d, a::c::e."""
    tree = tree.strip()
    i = tree.find("{")
    if i < 0:
        return [re.split(r"\s+as\s+", tree)[0].strip()]
    prefix = tree[:i]
    inner = tree[i + 1 : tree.rfind("}")]
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    out = []
    for p in parts:
        if p.strip():
            out.extend(prefix + q for q in expand_use(p))
    return out


def references(code):
    paths = []
    for m in re.finditer(r"\buse\s+([^;]*);", code, flags=re.S):
        paths.extend(expand_use(re.sub(r"\s+", " ", m.group(1))))
    body = re.sub(r"\buse\s+[^;]*;", " ", code, flags=re.S)
    paths.extend(re.findall(r"\b(?:crate|super|self)(?:::\w+)+", body))
    return [p for p in paths if re.match(r"(crate|super|self)\b", p)]


def reexports(module, code, modules):
    """Names `module` re-exports from its children (`pub use child::..::Name`),
    mapped to the child: a reference to `crate::Name` is one to the child."""
    out = {}
    for m in re.finditer(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]*);", code, flags=re.S):
        for path in expand_use(re.sub(r"\s+", " ", m.group(1))):
            segs = [s for s in path.split("::") if s and s != "self"]
            if len(segs) >= 2 and module + (segs[0],) in modules:
                out[re.split(r"\s+as\s+", segs[-1])[-1].strip()] = module + (segs[0],)
    return out


def resolve(module, path, modules, exported):
    segs = [s for s in path.split("::") if s]
    if segs[0] == "crate":
        base, segs = (), segs[1:]
    else:
        base = module
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
    target = base
    for s in segs:
        if target + (s,) in modules:
            target = target + (s,)
            continue
        if s in exported.get(target, {}):
            target = exported[target][s]
        break
    return target


def cycles(graph):
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def check_crate(crate):
    files = module_files(crate)
    modules = {m for m, _ in files}
    codes = {path: code_of(path) for _, path in files}
    exported = {m: reexports(m, codes[path], modules) for m, path in files}
    graph = defaultdict(set)
    why = {}
    for module, path in files:
        for ref in references(codes[path]):
            target = resolve(module, ref, modules, exported)
            k = 0
            while k < min(len(module), len(target)) and module[k] == target[k]:
                k += 1
            if k == len(module) or k == len(target):
                continue
            a, b = module[: k + 1], target[: k + 1]
            graph[a].add(b)
            graph[b]
            why.setdefault((a, b), f"{path}: {ref}")
    problems = []
    for comp in cycles(graph):
        names = ", ".join("::".join(m) for m in comp)
        lines = [f"  {why[(a, b)]}" for a in comp for b in comp if (a, b) in why]
        problems.append(f"{crate}: module circle between {names}:\n" + "\n".join(lines))
    return problems


def oversized(crate):
    out = []
    for _, path in module_files(crate):
        if os.path.basename(path) == "tests.rs" or f"{os.sep}tests{os.sep}" in path:
            continue
        n = sum(1 for _ in open(path, encoding="utf-8"))
        if n > MAX_LINES:
            out.append(f"{path}: {n} lines (at most {MAX_LINES}; split it along its seams)")
    return out


def main():
    os.chdir(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), ".."))
    problems = []
    for crate in CRATES:
        problems += check_crate(crate)
        problems += oversized(crate)
    for p in problems:
        print(p)
    if problems:
        sys.exit(1)
    print(f"structure: no module circles, no source file over {MAX_LINES} lines")


if __name__ == "__main__":
    main()
