#!/usr/bin/python3
"""Check that a RenderDoc capture of a wgtune training step reads like the model.

    /usr/bin/python3 scripts/renderdoc_check.py CAPTURE.rdc LAYER [LAYER ...]

Needs Debian's python3-renderdoc (the `renderdoc` module for the system Python). Opens the capture for local
replay, walks its action tree, and checks that each LAYER is a debug group (marker) holding at least one compute
dispatch, and that buffers and pipelines carry wgtune's labels. Prints the layers it found with their dispatch
counts; exits 1 naming what is missing.
"""
import sys

import renderdoc as rd


def walk(action, sfile, stack, groups, order):
    name = action.GetName(sfile)
    if action.flags & rd.ActionFlags.PushMarker:
        stack = stack + [name]
        if name not in groups:
            groups[name] = 0
            order.append(name)
    if action.flags & rd.ActionFlags.Dispatch:
        for g in set(stack):
            groups[g] += 1
    for child in action.children:
        walk(child, sfile, stack, groups, order)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    path, layers = sys.argv[1], sys.argv[2:]
    rd.InitialiseReplay(rd.GlobalEnvironment(), [])
    cap = rd.OpenCaptureFile()
    if cap.OpenFile(path, "", None) != rd.ResultCode.Succeeded:
        sys.exit(f"{path}: RenderDoc cannot open this file")
    if not cap.LocalReplaySupport():
        sys.exit(f"{path}: this machine cannot replay the capture")
    result, controller = cap.OpenCapture(rd.ReplayOptions(), None)
    if result != rd.ResultCode.Succeeded:
        sys.exit(f"{path}: replay failed to open: {result}")
    sfile = controller.GetStructuredFile()
    groups, order = {}, []
    for a in controller.GetRootActions():
        walk(a, sfile, [], groups, order)
    names = [r.name for r in controller.GetResources()]
    controller.Shutdown()
    cap.Shutdown()
    rd.ShutdownReplay()

    dispatches = max(groups.values(), default=0)
    print(f"{path}: {len(groups)} debug groups; {dispatches} dispatches in the outermost group")
    for g in order[:12]:
        print(f"  {g:<48} {groups[g]:>4} dispatches")
    if len(order) > 12:
        print(f"  ... {len(order) - 12} more groups")
    missing = [l for l in layers if groups.get(l, 0) == 0]
    labelled = [n for n in names if any(l in n for l in layers)]
    print(f"{len(names)} resources, {len(labelled)} named after the checked layers, e.g. {labelled[:3]}")
    if missing:
        sys.exit(f"FAIL: no debug group with dispatches for: {', '.join(missing)}")
    if not labelled:
        sys.exit("FAIL: no buffer or pipeline carries a layer's label")
    print(f"OK: all {len(layers)} layers appear as debug groups with their dispatches")


if __name__ == "__main__":
    main()
