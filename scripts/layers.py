#!/usr/bin/env python3
"""Checks the layering of freeq's src/ tree (stdlib only).

Reads every `use crate::...` and `crate::x::y` path in src/ (comments, doc
comments and `#[cfg(test)]` modules left out), maps each to the file that
defines its module, and fails on:

  (a) an import circle among src/ files;
  (b) an import from src/queue/ into src/reclaim/ or src/lock/, or from
      src/reclaim/ into src/lock/;
  (c) a src/ file over 700 lines outside its `#[cfg(test)]` modules;
  (d) a path that reaches an item through the crate root (`crate::defer`
      for the re-export of `defer::defer`): inside src/, name the module
      that defines it;
  (e) code in src/guide/, the documentation-only module: its files hold
      only attributes and empty `pub mod name {}` (or `pub mod name;`)
      chapters, import nothing, and nothing imports them.

`super::` and `self::` paths stay inside a file's own module and are not
followed. Prints the import graph's summary; exits 1 on any failure.

Usage: python3 scripts/layers.py [--graph]
"""

import os
import re
import sys

MAX_LINES = 700
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SRC = os.path.normpath(os.path.join(ROOT, "src"))

# The documentation-only layer: chapters of the guide, no code.
DOC_ONLY = "guide"

# Lower layers may not import from the folders listed for them.
FORBIDDEN = {
    "queue": ("reclaim", "lock"),
    "reclaim": ("lock",),
}


def module_of(rel):
    """`queue/buffer.rs` -> ('queue', 'buffer'); `lib.rs` -> ()."""
    parts = rel[:-3].split("/")
    if parts == ["lib"]:
        return ()
    if parts[-1] == "mod":
        parts = parts[:-1]
    return tuple(parts)


def strip_comments(text):
    """Blanks comments and string/char literals, keeping line breaks."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        nxt = text[i + 1] if i + 1 < n else ""
        if c == "/" and nxt == "/":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if c == "/" and nxt == "*":
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    if text[i] == "\n":
                        out.append("\n")
                    i += 1
            continue
        raw = re.match(r'r(#*)"', text[i:i + 10]) if c == "r" and (
            i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")) else None
        if raw:
            end = '"' + raw.group(1)
            j = text.find(end, i + len(raw.group(0)))
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
            continue
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
            continue
        if c == "'":
            m = re.match(r"'(\\.[^']*|[^'\\])'", text[i:i + 12])
            if m:
                out.append("' '")
                i += len(m.group(0))
                continue
        out.append(c)
        i += 1
    return "".join(out)


def test_module_spans(text):
    """(start, end) offsets of each `#[cfg(test)] mod name { ... }`."""
    spans = []
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{", text):
        depth, j = 1, m.end()
        while j < len(text) and depth:
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
            j += 1
        spans.append((m.start(), j))
    return spans


def use_paths(tree, prefix=()):
    """Expands a `use` tree (after `crate::`) into full paths."""
    tree = tree.strip()
    m = re.match(r"^([\w:]*?)(?:::)?\{(.*)\}$", tree, re.S)
    if m:
        base = prefix + tuple(s for s in m.group(1).split("::") if s)
        items, depth, cur = [], 0, ""
        for ch in m.group(2):
            if ch == "," and depth == 0:
                items.append(cur)
                cur = ""
                continue
            depth += ch == "{"
            depth -= ch == "}"
            cur += ch
        items.append(cur)
        paths = []
        for item in items:
            if item.strip():
                paths += use_paths(item, base)
        return paths
    tree = re.sub(r"\s+as\s+\w+$", "", tree)
    segs = [s for s in tree.replace(" ", "").split("::") if s]
    # `x::{self}` names the module `x` itself: kept as a trailing "self"
    # so that it is not taken for an item re-exported at the root.
    segs = [s for s in segs if s != "*"]
    return [prefix + tuple(segs)]


def crate_paths(code):
    """Each path as (segments, used_as_value): `used_as_value` when the
    path is called, or is a `use` of a single name (which imports the
    value namespace too)."""
    paths = []
    for m in re.finditer(r"\buse\s+crate::([^;]*);", code):
        paths += [(p, True) for p in use_paths(m.group(1))]
    rest = re.sub(r"\buse\s+crate::[^;]*;", " ", code)
    for m in re.finditer(r"(?<![\w])\$?crate((?:::\w+)+)\s*(\S?)", rest):
        segs = tuple(s for s in m.group(1).split("::") if s)
        paths.append((segs, m.group(2) in ("(", "!", "{")))
    return paths


def root_reexports(lib):
    """Names `lib.rs` re-exports with `pub use`."""
    names = set()
    for m in re.finditer(r"\bpub\s+use\s+([^;]*);", lib):
        for p in use_paths(m.group(1)):
            if p:
                names.add(p[-1])
        for a in re.finditer(r"\bas\s+(\w+)", m.group(1)):
            names.add(a.group(1))
    return names


def main():
    show_graph = "--graph" in sys.argv[1:]
    files = {}
    for dirpath, _, names in os.walk(SRC):
        for name in names:
            if name.endswith(".rs"):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, SRC).replace(os.sep, "/")
                files[rel] = open(path, encoding="utf-8").read()
    modules = {module_of(rel): rel for rel in files}
    reexported = root_reexports(strip_comments(files.get("lib.rs", "")))
    errors = []
    edges = {rel: set() for rel in files}

    for rel, text in sorted(files.items()):
        spans = test_module_spans(strip_comments(text))
        code = strip_comments(text)
        kept, last, test_lines = [], 0, 0
        for start, end in spans:
            kept.append(code[last:start])
            kept.append("\n" * code.count("\n", start, end))
            test_lines += code.count("\n", start, end)
            last = end
        kept.append(code[last:])
        code = "".join(kept)
        if rel.split("/")[0] == DOC_ONLY:
            rest = re.sub(r"#!?\[[^\]]*\]", " ", code)
            rest = re.sub(r"\bpub\s+mod\s+\w+\s*(\{\s*\}|;)", " ", rest)
            if rest.strip():
                errors.append(f"src/{rel}: the {DOC_ONLY} module is documentation only: "
                              f"attributes and empty `pub mod name {{}}` chapters, no code")
        lines = text.count("\n") + (0 if text.endswith("\n") else 1)
        if lines - test_lines > MAX_LINES:
            errors.append(f"src/{rel}: {lines - test_lines} lines outside tests (at most {MAX_LINES})")
        for path, as_value in crate_paths(code):
            explicit = path[-1:] == ("self",)
            if explicit:
                path = path[:-1]
            target = None
            for k in range(len(path), 0, -1):
                if path[:k] in modules:
                    target = modules[path[:k]]
                    break
            # `crate::defer(..)` or `use crate::defer;`: the module `defer`
            # and the function the root re-exports share the name.
            if (target is not None and len(path) == 1 and not explicit and as_value
                    and path[0] in reexported):
                target = None
            if target is None:
                if path:
                    errors.append(f"src/{rel}: `crate::{'::'.join(path)}` goes through the crate root; "
                                  f"name the module that defines it")
                continue
            if target != rel:
                edges[rel].add(target)

    def layer(rel):
        return rel.split("/")[0] if "/" in rel else "top"

    for rel, targets in sorted(edges.items()):
        for t in sorted(targets):
            if DOC_ONLY in (layer(rel), layer(t)) and layer(rel) != layer(t):
                errors.append(f"src/{rel} imports src/{t}: the {DOC_ONLY} module is documentation "
                              f"only; it neither imports nor is imported")
            if layer(t) in FORBIDDEN.get(layer(rel), ()):
                errors.append(f"src/{rel} imports src/{t}: the {layer(rel)} layer may not import the {layer(t)} layer")

    # Tarjan's strongly connected components: any with two files or more
    # is an import circle.
    index, low, stack, on, sccs = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
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
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    for comp in sccs:
        errors.append("import circle among: " + ", ".join("src/" + c for c in comp))

    n_edges = sum(len(t) for t in edges.values())
    between = {}
    for rel, targets in edges.items():
        for t in targets:
            key = (layer(rel), layer(t))
            between[key] = between.get(key, 0) + 1
    print(f"layers: {len(files)} files, {n_edges} imports between files, "
          f"{len(sccs)} circles")
    for (a, b), count in sorted(between.items()):
        print(f"  {a:>7} -> {b:<7} {count}")
    if show_graph:
        for rel in sorted(edges):
            print(f"src/{rel}: " + ", ".join(sorted(edges[rel])))
    for e in errors:
        print("error: " + e, file=sys.stderr)
    if errors:
        sys.exit(1)
    print("layers: ok")


if __name__ == "__main__":
    main()
