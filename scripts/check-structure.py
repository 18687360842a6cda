#!/usr/bin/env python3
"""The structure rules of ../shared/ARCHITECTURE.md, checked on the sources (CI runs this):

- no import cycle between the modules of a crate (edges between a module and its ancestors
  or descendants, and to the crate root's basic types, aside);
- no source file above 800 lines (tests aside);
- every source file opens with a doc comment saying what it holds.

Usage: scripts/check-structure.py CRATE_DIR... ; exits 1 on any finding.
"""
import os, re, sys, itertools
def modules(src):
    mods={}
    for dp,_,fs in os.walk(src):
        for f in fs:
            if not f.endswith('.rs'): continue
            p=os.path.join(dp,f); rel=os.path.relpath(p,src)[:-3].split(os.sep)
            if rel[-1]=='mod': rel=rel[:-1]
            if rel in (['lib'],['main']): rel=[]
            if rel and rel[0] in ('bin',): continue
            mods['::'.join(rel)]=p
    return mods
def deps(mods):
    g={m:set() for m in mods}
    for m,p in mods.items():
        text=open(p).read()
        text=re.sub(r'#\[cfg\(test\)\]\s*mod tests\s*\{.*','',text,flags=re.S)
        parts=m.split('::') if m else []
        refs=[]
        for mm in re.finditer(r'\bcrate::([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)',text):
            refs.append(mm.group(1).split('::'))
        for mm in re.finditer(r'\b((?:super::)+)([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)?',text):
            ups=mm.group(1).count('super::')
            base=parts[:len(parts)-ups] if not p.endswith('mod.rs') else parts[:len(parts)-ups]
            # in a non-mod file, `super` is the parent directory module
            if not (p.endswith('mod.rs') or p.endswith('lib.rs') or p.endswith('main.rs')):
                base=parts[:len(parts)-ups]
            rest=(mm.group(2) or '').split('::') if mm.group(2) else []
            refs.append(base+rest)
        for mm in re.finditer(r'^\s*(?:pub(?:\([a-z]+\))?\s+)?use\s+([a-z_][a-z0-9_]*)::',text,flags=re.M):
            # `use child::X` inside a mod.rs
            if mm.group(1) not in ('std','crate','super','self','core','alloc') and '::'.join(parts+[mm.group(1)]) in mods:
                refs.append(parts+[mm.group(1)])
        for r in refs:
            # longest existing module prefix
            for k in range(len(r),0,-1):
                t='::'.join(r[:k])
                if t in mods: break
            else: continue
            if t and t!=m: g[m].add(t)
    return g
def related(a,b):
    return a=='' or b=='' or a.startswith(b+'::') or b.startswith(a+'::')
bad=0
for crate in sys.argv[1:]:
    mods=modules(os.path.join(crate,'src')); g=deps(mods)
    # cycles via SCC over edges between unrelated modules
    edges={m:{t for t in ts if not related(m,t)} for m,ts in g.items()}
    index={};low={};st=[];on=set();res=[];c=[0]
    def sc(v):
        index[v]=low[v]=c[0];c[0]+=1;st.append(v);on.add(v)
        for w in edges[v]:
            if w not in index: sc(w);low[v]=min(low[v],low[w])
            elif w in on: low[v]=min(low[v],index[w])
        if low[v]==index[v]:
            comp=[]
            while True:
                w=st.pop();on.discard(w);comp.append(w)
                if w==v:break
            if len(comp)>1: res.append(comp)
    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index: sc(v)
    for comp in res:
        bad+=1
        print(f"{crate}: cycle among {sorted(comp)}")
        for a in comp:
            print("   ", a, "->", sorted(t for t in edges[a] if t in comp))
for crate in sys.argv[1:]:
    for p in modules(os.path.join(crate, 'src')).values():
        text = open(p).read()
        code = re.sub(r'#\[cfg\(test\)\]\s*mod tests\s*\{.*', '', text, flags=re.S)
        n = code.count('\n')
        if n > 800:
            bad += 1
            print(f"{p}: {n} lines (one concept per file; past 800 is surely two)")
        if not text.startswith('//!') and not text.startswith('#!'):
            bad += 1
            print(f"{p}: no opening doc comment")
print(f"structure: {bad} finding(s)")
sys.exit(1 if bad else 0)
