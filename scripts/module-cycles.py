#!/usr/bin/env python3
"""Fails when modules of a crate import each other in a circle.

A module is a file under CRATE/src; an edge A -> B is a `crate::B…`, `super::B…` or
`self::`-free path in A that names sibling module B. The crate root (lib.rs/main.rs) and a
directory module's mod.rs only declare and re-export their children, so edges from a parent
to its children are not counted (a child using its parent's items is). Usage:
    scripts/module-cycles.py primary secondary base cli tracker-bpf
"""
import os
import re
import sys


def modules(src):
    mods = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith('.rs'):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), src)[:-3]
            parts = rel.split(os.sep)
            if parts[-1] in ('mod', 'lib', 'main'):
                parts = parts[:-1]
            mods['::'.join(parts)] = os.path.join(dirpath, f)
    return mods


def code(path):
    text = open(path, encoding='utf-8').read()
    # Tests may use anything: cut a trailing `#[cfg(test)] mod tests { … }`.
    i = text.find('#[cfg(test)]\nmod tests')
    text = text if i < 0 else text[:i]
    return re.sub(r'//[^\n]*', '', text)


def edges(mods):
    out = {m: set() for m in mods}
    for m, path in mods.items():
        parent = m.rsplit('::', 1)[0] if '::' in m else ''
        for base, rest in re.findall(r'\b(crate|super)::((?:[a-z_][a-z0-9_]*::)*[a-z_][a-z0-9_]*)', code(path)):
            prefix = '' if base == 'crate' else parent
            if base == 'super' and m and '::' not in m:
                prefix = ''
            name = (prefix + '::' if prefix else '') + rest
            # The longest known module that `name` starts with.
            parts = name.split('::')
            for n in range(len(parts), 0, -1):
                cand = '::'.join(parts[:n])
                if cand in mods:
                    break
            else:
                continue
            if cand == m or m.startswith(cand + '::') and False:
                continue
            # A parent declaring its children is not an import.
            if cand.startswith(m + '::') or (m == '' and cand):
                continue
            if cand == '' or cand == m:
                continue
            out[m].add(cand)
    return out


def cycles(graph):
    index, low, stack, on, res, i = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = i[0]
        i[0] += 1
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
                res.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return res


def main():
    bad = 0
    for crate in sys.argv[1:]:
        src = os.path.join(crate, 'src')
        for comp in cycles(edges(modules(src))):
            bad += 1
            print(f'{crate}: modules import each other in a circle: {", ".join(c or "<root>" for c in comp)}')
    sys.exit(1 if bad else 0)


if __name__ == '__main__':
    main()
