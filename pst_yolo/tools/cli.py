"""pst-yolo: the project's tools as one command, in the style of Ultralytics' yolo.

    pst-yolo help                                   # the commands
    pst-yolo demo                                   # the main job on generated data
    pst-yolo compare yolo11n.yaml yolo11n-pst-res.yaml data=my.yaml epochs=40 jobs=2
    pst-yolo <command> --help                       # a command's options

Options can be given as ``--key value`` or, as with ``yolo``, as ``key=value`` (``epochs=3``, ``device=0``,
``data=my.yaml``). A ``key=value`` that is not an option of the command stays as it is, where the command takes such
pairs (compare and demo pass them to every ``yolo train``) or is refused by name.
"""

from __future__ import annotations

import importlib
import re
import sys

# command -> (module in pst_yolo.tools, one line on what it does)
COMMANDS = {
    "demo": ("demo", "the main job: PST models and stock YOLO11n trained side by side on generated data, a table"),
    "compare": ("compare", "train models side by side with identical settings and seeds; table and learning curves"),
    "finecheck": ("finecheck", "PST checkpoints validated at each fine-attention setting and form, per layer"),
    "bench": ("bench", "CPU latency, memory, op counts and training cost of PST models vs stock"),
    "visualize": ("visualize", "draw what PST attends to: coarse attention, chosen fine regions, predictions"),
    "export-matrix": ("export_matrix", "export to every installed Ultralytics format, validate each file"),
    "models": ("models", "parameter and FLOP table of every shipped model beside the paper's"),
    "ablate": ("ablate", "the paper's Table 4 ablations, trained and validated with fine attention on and off"),
    "data": ("data", "write the generated data sets (shapes for every task, clutter, photos, look-alikes)"),
    "ort-profile": ("ort_profile", "onnxruntime's profiler on exported models: time per op type"),
    "fake-cuda": ("fakecuda", "the CUDA path of every PST model checked without a GPU, on fake CUDA tensors"),
    "gpu-check": ("gpu_check", "the GPU verification: CUDA training, kernels, latency, memory (--smoke: on CPU)"),
}
_PAIR = re.compile(r"^([A-Za-z_][\w-]*)=(.*)$", re.S)


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [__doc__.split("\n\n")[0], "", "commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    lines += ["", "  pst-yolo <command> --help   shows a command's options; key=value works for any of them"]
    return "\n".join(lines)


def as_options(argv: list, parser) -> list:
    """``key=value`` -> ``--key=value`` where ``--key`` (or ``--key`` with dashes for underscores) is an option of
    ``parser``; anything else is left as it is."""
    options = {s for a in parser._actions for s in a.option_strings}
    out = []
    for token in argv:
        m = _PAIR.match(token)
        if m and not token.startswith("-"):
            for flag in (f"--{m.group(1)}", f"--{m.group(1).replace('_', '-')}"):
                if flag in options:
                    token = f"{flag}={m.group(2)}"
                    break
        out.append(token)
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("help", "-h", "--help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version", "version"):
        from pst_yolo import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"pst-yolo: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    from pst_yolo.progress import Watchdog
    from pst_yolo.runner import Interrupted

    try:
        with Watchdog(f"pst-yolo {name}"):  # every command: never silent for long (its imports included)
            module = importlib.import_module(f"pst_yolo.tools.{COMMANDS[name][0]}")
            return module.main(as_options(rest, module.parser())) or 0
    except Interrupted as e:
        print(f"pst-yolo {name}: {e}", file=sys.stderr, flush=True)
        return 128 + e.signum


if __name__ == "__main__":
    raise SystemExit(main())
